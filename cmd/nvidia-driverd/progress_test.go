package main

import "testing"

func TestPerSecond(t *testing.T) {
	for in, want := range map[float64]string{
		0: "0.00 B/s", 512: "512 B/s", 2048: "2.00 KiB/s", 812 << 10: "812 KiB/s",
		45.24 * (1 << 20): "45.2 MiB/s", 1.5 * (1 << 30): "1.50 GiB/s",
	} {
		if got := perSecond(in); got != want {
			t.Errorf("perSecond(%v) = %q, want %q", in, got, want)
		}
	}
}
