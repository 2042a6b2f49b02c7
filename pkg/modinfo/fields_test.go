package modinfo_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

func TestParseFields(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		section string
		fields  map[string][]string
		keys    []string
	}{
		{
			name:    "an empty section gives an empty map and no keys",
			section: "",
			fields:  map[string][]string{},
		},
		{
			name:    "a section of padding gives an empty map",
			section: "\x00\x00\x00\x00",
			fields:  map[string][]string{},
		},
		{
			name:    "entries are split on NUL and padding is skipped",
			section: "license=GPL\x00\x00\x00\x00alias=a\x00version=1\x00",
			fields:  map[string][]string{"license": {"GPL"}, "alias": {"a"}, "version": {"1"}},
			keys:    []string{"license", "alias", "version"},
		},
		{
			name:    "repeated keys keep their values in order and their first position",
			section: "alias=b\x00parm=p\x00alias=a\x00alias=c\x00",
			fields:  map[string][]string{"alias": {"b", "a", "c"}, "parm": {"p"}},
			keys:    []string{"alias", "parm"},
		},
		{
			name:    "a value may contain '=' and may be empty",
			section: "parm=x:int=1\x00depends=\x00",
			fields:  map[string][]string{"parm": {"x:int=1"}, "depends": {""}},
			keys:    []string{"parm", "depends"},
		},
		{
			name:    "the last entry needs no terminating NUL",
			section: "a=1\x00b=2",
			fields:  map[string][]string{"a": {"1"}, "b": {"2"}},
			keys:    []string{"a", "b"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			fields, keys, err := modinfo.ParseFields([]byte(c.section))
			if err != nil {
				t.Fatalf("ParseFields: %v", err)
			}
			if !reflect.DeepEqual(fields, c.fields) {
				t.Errorf("fields = %q, want %q", fields, c.fields)
			}
			if !reflect.DeepEqual(keys, c.keys) {
				t.Errorf("keys = %q, want %q", keys, c.keys)
			}
		})
	}

	for _, c := range []struct{ name, section, want string }{
		{"an entry without '=' is an error naming its offset", "a=1\x00\x00junk\x00", `entry at offset 5 has no '=': "junk"`},
		{"an entry with an empty key is an error", "=value", `entry at offset 0 has an empty key: "=value"`},
		{"a long bad entry is quoted shortened", strings.Repeat("x", 100), `entry at offset 0 has no '=': "` + strings.Repeat("x", 40) + `..."`},
	} {
		t.Run(c.name, func(t *testing.T) {
			fields, keys, err := modinfo.ParseFields([]byte(c.section))
			if err == nil || err.Error() != c.want {
				t.Errorf("ParseFields error = %v, want %s", err, c.want)
			}
			if fields != nil || keys != nil {
				t.Errorf("ParseFields returned %q, %q with an error; want nil, nil", fields, keys)
			}
		})
	}
}
