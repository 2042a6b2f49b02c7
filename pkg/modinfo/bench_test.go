package modinfo_test

import (
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

func BenchmarkRead(b *testing.B) {
	for _, compress := range []string{"", "xz", "zstd"} {
		name := compress
		if name == "" {
			name = "plain"
		}
		b.Run(name, func(b *testing.B) {
			path := kofixture.Build(b, b.TempDir(), kofixture.Module{Name: "nvidia", Fields: nvidiaFields(), Sign: true, Compress: compress})
			b.ReportAllocs()
			for b.Loop() {
				if _, err := modinfo.Read(path); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkParseVermagic(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := modinfo.ParseVermagic(testVermagic); err != nil {
			b.Fatal(err)
		}
	}
}
