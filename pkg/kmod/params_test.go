package kmod

import (
	"reflect"
	"testing"
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
		opts := map[string][]string{}
		parseModprobe("options o a=1\n  # options o c=3\noptions\tnvidia-drm   modeset=1 \\\n  fbdev=1\nalias foo o\noptions ../x a=1\noptions o a=2 b\n", opts)
		want := map[string][]string{"o": {"a=2", "b"}, "nvidia_drm": {"modeset=1", "fbdev=1"}}
		if !reflect.DeepEqual(opts, want) {
			t.Errorf("got %q, want %q", opts, want)
		}
	})

	t.Run("a missing modprobe.d has no options", func(t *testing.T) {
		got, err := readModprobeDir(t.TempDir() + "/none")
		if err != nil || len(got) != 0 {
			t.Errorf("got %v, %v", got, err)
		}
	})
}
