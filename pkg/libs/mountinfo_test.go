package libs

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	t.Run("fields are read around optional fields and unescaped", func(t *testing.T) {
		text := `22 1 0:21 / /proc rw,nosuid - proc proc rw
65 43 0:39 / /host\040root/usr/lib64 ro,relatime shared:7 master:2 - overlay overlay ro,lowerdir=/opt/nvidia/550.54.14/3815.2.0/lib64:/host\040root/usr/lib64,redirect_dir=on
`
		got, err := parseMountinfo(text)
		if err != nil {
			t.Fatal(err)
		}
		want := []mount{
			{id: 22, parent: 1, point: "/proc", fstype: "proc", source: "proc"},
			{id: 65, parent: 43, point: "/host root/usr/lib64", fstype: "overlay", source: "overlay",
				lower: []string{"/opt/nvidia/550.54.14/3815.2.0/lib64", "/host root/usr/lib64"}},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v\nwant %+v", got, want)
		}
	})

	t.Run("lower layers come from lowerdir+ options, escaped colons and commas stay in a layer, data-only layers are left out", func(t *testing.T) {
		cases := map[string][]string{
			"ro,lowerdir+=/a,lowerdir+=/b,datadir+=/d":  {"/a", "/b"},
			`ro,lowerdir=/a\:x:/b\054c`:                 {"/a:x", "/b,c"},
			"ro,lowerdir=/a:/b::/data1::/data2,xino=on": {"/a", "/b"},
			"rw,upperdir=/u,workdir=/w":                 nil,
		}
		for opts, want := range cases {
			if got := overlayLower(opts); !reflect.DeepEqual(got, want) {
				t.Errorf("%s: got %q, want %q", opts, got, want)
			}
		}
	})

	t.Run("a malformed line is an error naming it", func(t *testing.T) {
		for _, line := range []string{"22 1 0:21 / /proc rw", "x 1 0:21 / /proc rw - proc proc rw", "22 1 0:21 / /proc rw - proc"} {
			_, err := parseMountinfo("1 0 8:1 / / rw - ext4 /dev/vda rw\n" + line + "\n")
			if err == nil || !strings.Contains(err.Error(), "line 2") {
				t.Errorf("%q: error %v", line, err)
			}
		}
	})
}

func TestStackAt(t *testing.T) {
	t.Run("mounts on one point come topmost first whatever the table order", func(t *testing.T) {
		mounts := []mount{
			{id: 1, parent: 0, point: "/"},
			{id: 30, parent: 20, point: "/usr/lib64"},
			{id: 20, parent: 1, point: "/usr/lib64"},
			{id: 40, parent: 30, point: "/usr/lib64"},
			{id: 50, parent: 1, point: "/opt/bin"},
		}
		var ids []int
		for _, m := range stackAt(mounts, "/usr/lib64") {
			ids = append(ids, m.id)
		}
		if !reflect.DeepEqual(ids, []int{40, 30, 20}) {
			t.Errorf("stack %v, want [40 30 20]", ids)
		}
		if s := stackAt(mounts, "/nowhere"); s != nil {
			t.Errorf("stack on an unmounted point: %+v", s)
		}
	})
}
