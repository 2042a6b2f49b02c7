package kmod

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParams(t *testing.T) {
	t.Parallel()
	t.Run("words split at spaces outside double quotes", func(t *testing.T) {
		got := splitParams(` a=1	b="x y"  c  d="" `)
		if want := []string{"a=1", `b="x y"`, "c", `d=""`}; !reflect.DeepEqual(got, want) {
			t.Errorf("got %q, want %q", got, want)
		}
	})

	t.Run("a later word replaces an earlier one with the same key in either spelling", func(t *testing.T) {
		if got, want := mergeParams([]string{"a-b=1", "c=2"}, []string{"a_b=3", "d"}), "a_b=3 c=2 d"; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})

	t.Run("configured names in either spelling are merged", func(t *testing.T) {
		got, err := configParams(map[string]string{"nvidia-drm": "modeset=0 fbdev=1", "nvidia_drm": "modeset=1"})
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string][]string{"nvidia_drm": {"modeset=1", "fbdev=1"}}; !reflect.DeepEqual(got, want) {
			t.Errorf("got %q, want %q", got, want)
		}
	})

	t.Run("an invalid configured module name is an error", func(t *testing.T) {
		if _, err := configParams(map[string]string{"../nvidia": "a=1"}); err == nil {
			t.Error("no error")
		}
	})

	t.Run("modprobe.d options lines are read and everything else ignored", func(t *testing.T) {
		lists := map[string]*paramList{}
		if err := parseModprobe("options o a=1\n  # options o c=3\noptions\tnvidia-drm   modeset=1 \\\n  fbdev=1\nalias foo o\noptions ../x a=1\noptions o a=2 b\n", lists); err != nil {
			t.Fatal(err)
		}
		opts := wordsOf(lists)
		want := map[string][]string{"o": {"a=2", "b"}, "nvidia_drm": {"modeset=1", "fbdev=1"}}
		if !reflect.DeepEqual(opts, want) {
			t.Errorf("got %q, want %q", opts, want)
		}
	})

	t.Run("50,000 parameters are refused at the cap, quickly", func(t *testing.T) {
		dir := t.TempDir()
		var b strings.Builder
		b.WriteString("options nvidia")
		for i := range 50000 {
			fmt.Fprintf(&b, " p%d=%d", i, i)
		}
		writeFile(t, filepath.Join(dir, "big.conf"), b.String()+"\n")
		start := time.Now()
		_, err := readModprobeDir(dir)
		if err == nil || !strings.Contains(err.Error(), "more than 1024 parameters") || !strings.Contains(err.Error(), "big.conf") {
			t.Errorf("err = %v", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("took %v", took)
		}
	})

	t.Run("merging is linear: 1,000 words, half replaced", func(t *testing.T) {
		var modprobe, config []string
		for i := range 1000 {
			modprobe = append(modprobe, fmt.Sprintf("p%d=a", i))
			if i%2 == 0 {
				config = append(config, fmt.Sprintf("p%d=b", i))
			}
		}
		got := strings.Fields(mergeParams(modprobe, config))
		if len(got) != 1000 || got[0] != "p0=b" || got[1] != "p1=a" {
			t.Errorf("got %d words starting %q", len(got), got[:2])
		}
	})

	t.Run("a configured parameter is kept however many the tree has", func(t *testing.T) {
		var modprobe []string
		for i := range maxParams {
			modprobe = append(modprobe, fmt.Sprintf("p%d=a", i))
		}
		if got := mergeParams(modprobe, []string{"NVreg_EnableMSI=1"}); !strings.HasSuffix(got, " NVreg_EnableMSI=1") {
			t.Errorf("the configured parameter was dropped: ...%s", got[len(got)-40:])
		}
	})

	t.Run("a missing modprobe.d has no options", func(t *testing.T) {
		got, err := readModprobeDir(t.TempDir() + "/none")
		if err != nil || len(got) != 0 {
			t.Errorf("got %v, %v", got, err)
		}
	})
}
