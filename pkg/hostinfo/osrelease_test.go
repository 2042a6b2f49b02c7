package hostinfo

import (
	"errors"
	"io/fs"
	"maps"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestParseOSRelease(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		input string
		want  map[string]string
	}{
		{"an unquoted value is taken as is", "ID=flatcar\n", map[string]string{"ID": "flatcar"}},
		{"a double-quoted value loses its quotes", `NAME="Flatcar Container Linux"`, map[string]string{"NAME": "Flatcar Container Linux"}},
		{"a single-quoted value loses its quotes", `NAME='Debian GNU/Linux'`, map[string]string{"NAME": "Debian GNU/Linux"}},
		{"double quotes honour the four escapes", `X="a\"b\\c\$d\` + "`" + `e"`, map[string]string{"X": "a\"b\\c$d`e"}},
		{"double quotes keep a backslash before other characters", `X="C:\temp\n"`, map[string]string{"X": `C:\temp\n`}},
		{"single quotes keep backslashes", `X='a\"b\\'`, map[string]string{"X": `a\"b\\`}},
		{"single quotes may hold double quotes", `X='say "hi"'`, map[string]string{"X": `say "hi"`}},
		{"double quotes may hold single quotes", `X="it's"`, map[string]string{"X": "it's"}},
		{"an unquoted backslash escapes the next character", `X=a\ b\"c\\d`, map[string]string{"X": `a b"c\d`}},
		{"an unquoted trailing backslash is kept", `X=abc\`, map[string]string{"X": `abc\`}},
		{"adjacent quoted parts are concatenated", `X="a b"'c d'e`, map[string]string{"X": "a bc de"}},
		{"KEY= gives an empty value", "BUILD_ID=\n", map[string]string{"BUILD_ID": ""}},
		{"an empty quoted value is empty", `X=""` + "\nY=''", map[string]string{"X": "", "Y": ""}},
		{"comments and blank lines are skipped", "# comment\n\n   \n  # indented comment\nID=x\n", map[string]string{"ID": "x"}},
		{"a '#' inside a value is kept", `X=a#b`, map[string]string{"X": "a#b"}},
		{"an '=' inside a value is kept", `X="a=b"`, map[string]string{"X": "a=b"}},
		{"trailing whitespace and CR are trimmed", "ID=flatcar  \t\r\nX=\"y\" \r\n", map[string]string{"ID": "flatcar", "X": "y"}},
		{"whitespace inside quotes is kept", `X="  y  "`, map[string]string{"X": "  y  "}},
		{"a later assignment wins", "ID=a\nID=b\n", map[string]string{"ID": "b"}},
		{"a key may hold digits and underscores", "_A1_B2=v", map[string]string{"_A1_B2": "v"}},
		{"empty input gives no fields", "", map[string]string{}},
		{"a missing final newline is fine", "ID=x", map[string]string{"ID": "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOSRelease(strings.NewReader(tt.input))
			if err != nil {
				t.Fatalf("ParseOSRelease(%q): %v", tt.input, err)
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("ParseOSRelease(%q) = %q, want %q", tt.input, got, tt.want)
			}
		})
	}
}

func TestParseOSReleaseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		input   string
		wantErr string
	}{
		{"a line without '=' is an error", "ID=x\n\nflatcar\n", "line 3: missing '='"},
		{"an empty key is an error", "=x", "line 1: invalid key"},
		{"a key starting with a digit is an error", "# c\n1ID=x", "line 2: invalid key"},
		{"a key with a dash is an error", "VERSION-ID=1", "line 1: invalid key"},
		{"a space before '=' is an error", "ID =x", "line 1: invalid key"},
		{"an unterminated double quote is an error", "ID=x\nNAME=\"Flatcar\n", "line 2: NAME: unterminated double quote"},
		{"an escaped closing double quote leaves it unterminated", `NAME="abc\"`, "line 1: NAME: unterminated double quote"},
		{"an unterminated single quote is an error", "\n\n\nNAME='x", "line 4: NAME: unterminated single quote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOSRelease(strings.NewReader(tt.input))
			if err == nil {
				t.Fatalf("ParseOSRelease(%q) = %q, want error", tt.input, got)
			}
			if !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Errorf("ParseOSRelease(%q): err = %q, want prefix %q", tt.input, err, tt.wantErr)
			}
		})
	}

	t.Run("a reader error is returned", func(t *testing.T) {
		boom := errors.New("boom")
		if _, err := ParseOSRelease(errReader{boom}); !errors.Is(err, boom) {
			t.Errorf("err = %v, want %v", err, boom)
		}
	})
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestReadOSReleaseFixtures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		host                                   string
		wantID, wantFamily, wantVer, wantBuild string
		wantPath                               string
	}{
		{"flatcar", "flatcar", FamilyFlatcar, "3815.2.0", "2024-02-12-1523", "etc/os-release"},
		{"coreos", "coreos", FamilyCoreOS, "1576.5.0", "2018-01-05-1121", "etc/os-release"},
		{"debian", "debian", FamilyGeneric, "12", "", "usr/lib/os-release"},
	}
	for _, tt := range tests {
		t.Run("the "+tt.host+" fixture is recognised", func(t *testing.T) {
			root := fixture(t, tt.host)
			o, err := ReadOSRelease(root)
			if err != nil {
				t.Fatal(err)
			}
			if o.ID != tt.wantID || o.Family() != tt.wantFamily || o.OSVersion() != tt.wantVer || o.BuildID != tt.wantBuild {
				t.Errorf("got ID %q family %q version %q build %q, want %q %q %q %q",
					o.ID, o.Family(), o.OSVersion(), o.BuildID, tt.wantID, tt.wantFamily, tt.wantVer, tt.wantBuild)
			}
			if want := filepath.Join(root, tt.wantPath); o.Path != want {
				t.Errorf("Path = %q, want %q", o.Path, want)
			}
			if o.Fields["ID"] != tt.wantID || o.Name == "" || o.PrettyName == "" {
				t.Errorf("fields not filled in: %+v", o)
			}
		})
	}

	t.Run("Flatcar's fields are all read through the symlink", func(t *testing.T) {
		o, err := ReadOSRelease(fixture(t, "flatcar"))
		if err != nil {
			t.Fatal(err)
		}
		want := OSRelease{
			ID: "flatcar", IDLike: "coreos", Name: "Flatcar Container Linux by Kinvolk",
			PrettyName: "Flatcar Container Linux by Kinvolk 3815.2.0 (Oklo)",
			Version:    "3815.2.0", VersionID: "3815.2.0", BuildID: "2024-02-12-1523",
		}
		if !equalRelease(o, want) {
			t.Errorf("got %+v, want %+v", o, want)
		}
	})

	t.Run("Debian's quoted VERSION is unquoted", func(t *testing.T) {
		o, err := ReadOSRelease(fixture(t, "debian"))
		if err != nil {
			t.Fatal(err)
		}
		if o.Version != "12 (bookworm)" || o.Fields["VERSION_CODENAME"] != "bookworm" {
			t.Errorf("Version = %q, VERSION_CODENAME = %q", o.Version, o.Fields["VERSION_CODENAME"])
		}
	})
}

func equalRelease(a, b OSRelease) bool {
	return a.ID == b.ID && a.IDLike == b.IDLike && a.Name == b.Name && a.PrettyName == b.PrettyName &&
		a.Version == b.Version && a.VersionID == b.VersionID && a.BuildID == b.BuildID
}

func TestReadOSRelease(t *testing.T) {
	t.Parallel()
	t.Run("/etc/os-release wins over /usr/lib/os-release", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"etc/os-release":     "ID=etc\n",
			"usr/lib/os-release": "ID=usrlib\n",
		})
		o, err := ReadOSRelease(root)
		if err != nil {
			t.Fatal(err)
		}
		if o.ID != "etc" || o.Path != filepath.Join(root, "etc/os-release") {
			t.Errorf("got ID %q from %q", o.ID, o.Path)
		}
	})

	t.Run("/usr/lib/os-release is read when /etc has none", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{"etc/": "", "usr/lib/os-release": "ID=usrlib\n"})
		o, err := ReadOSRelease(root)
		if err != nil {
			t.Fatal(err)
		}
		if o.ID != "usrlib" || o.Path != filepath.Join(root, "usr/lib/os-release") {
			t.Errorf("got ID %q from %q", o.ID, o.Path)
		}
	})

	t.Run("an absolute symlink is resolved inside root", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"etc/os-release":     "->/usr/lib/os-release",
			"usr/lib/os-release": "ID=inside\nVERSION=7\n",
		})
		o, err := ReadOSRelease(root)
		if err != nil {
			t.Fatal(err)
		}
		if o.ID != "inside" || o.OSVersion() != "7" {
			t.Errorf("got ID %q version %q, want inside 7", o.ID, o.OSVersion())
		}
	})

	t.Run("a symlink climbing above root stays inside it", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"etc/os-release":     "->../../../../../../usr/lib/os-release",
			"usr/lib/os-release": "ID=inside\n",
		})
		o, err := ReadOSRelease(root)
		if err != nil {
			t.Fatal(err)
		}
		if o.ID != "inside" {
			t.Errorf("got ID %q, want inside", o.ID)
		}
	})

	t.Run("a dangling /etc/os-release falls back to /usr/lib", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"etc/os-release":     "->/run/os-release",
			"usr/lib/os-release": "ID=usrlib\n",
		})
		o, err := ReadOSRelease(root)
		if err != nil {
			t.Fatal(err)
		}
		if o.ID != "usrlib" {
			t.Errorf("got ID %q, want usrlib", o.ID)
		}
	})

	t.Run("a missing ID defaults to linux", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{"etc/os-release": "NAME=Linux\nVERSION=1.0\n"})
		o, err := ReadOSRelease(root)
		if err != nil {
			t.Fatal(err)
		}
		if o.ID != "linux" || o.Family() != FamilyGeneric || o.OSVersion() != "1.0" {
			t.Errorf("got ID %q family %q version %q", o.ID, o.Family(), o.OSVersion())
		}
		if _, ok := o.Fields["ID"]; ok {
			t.Errorf("Fields has a defaulted ID: %q", o.Fields)
		}
	})

	t.Run("no os-release at all is an error naming both paths", func(t *testing.T) {
		root := t.TempDir()
		_, err := ReadOSRelease(root)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %v, want not-exist", err)
		}
		for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
			if !strings.Contains(err.Error(), filepath.Join(root, p)) {
				t.Errorf("err = %q, does not name %s", err, p)
			}
		}
	})

	t.Run("a malformed file is an error naming the path and line", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{"etc/os-release": "ID=x\n\nNAME=\"x\n"})
		_, err := ReadOSRelease(root)
		want := "read os-release: " + filepath.Join(root, "etc/os-release") + ": line 3: "
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("err = %v, want prefix %q", err, want)
		}
	})

	t.Run("an unreadable os-release is an error, not a fallback", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{"etc/os-release/": "", "usr/lib/os-release": "ID=x\n"})
		if o, err := ReadOSRelease(root); err == nil {
			t.Errorf("got %+v, want error for a directory at /etc/os-release", o)
		}
	})

	t.Run("a missing root is an error", func(t *testing.T) {
		if _, err := ReadOSRelease(filepath.Join(t.TempDir(), "nope")); err == nil {
			t.Error("got no error")
		}
	})
}

func TestOSVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		o    OSRelease
		want string
	}{
		{"VERSION_ID is preferred", OSRelease{Version: "12 (bookworm)", VersionID: "12"}, "12"},
		{"VERSION is the fallback", OSRelease{Version: "3815.2.0"}, "3815.2.0"},
		{"neither gives empty", OSRelease{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.o.OSVersion(); got != tt.want {
				t.Errorf("OSVersion() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestFamily(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		o    OSRelease
		want string
	}{
		{"flatcar is Flatcar even though ID_LIKE is coreos", OSRelease{ID: "flatcar", IDLike: "coreos"}, FamilyFlatcar},
		{"coreos is CoreOS", OSRelease{ID: "coreos"}, FamilyCoreOS},
		{"Fedora CoreOS is generic", OSRelease{ID: "fedora", IDLike: ""}, FamilyGeneric},
		{"something only like coreos is generic", OSRelease{ID: "other", IDLike: "coreos"}, FamilyGeneric},
		{"the default linux is generic", OSRelease{ID: "linux"}, FamilyGeneric},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.o.Family(); got != tt.want {
				t.Errorf("Family() = %q, want %q", got, tt.want)
			}
		})
	}
}

func FuzzParseOSRelease(f *testing.F) {
	for _, s := range []string{
		"",
		"ID=flatcar\nVERSION_ID=3815.2.0\n",
		`NAME="Flatcar Container Linux by Kinvolk"` + "\n",
		"# comment\n\nX='single'\n",
		`X="a\"b\\c\$d` + "`\"\n",
		`X=a\ b"c d"'e'` + "\n",
		"X=\"unterminated\n",
		"no equals\n",
		"1BAD=x\n",
		"X=abc\\",
	} {
		f.Add(s)
	}
	keyRE := regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	f.Fuzz(func(t *testing.T, input string) {
		fields, err := ParseOSRelease(strings.NewReader(input))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "line ") {
				t.Errorf("error %q does not name a line", err)
			}
			return
		}
		for k := range fields {
			if !keyRE.MatchString(k) {
				t.Errorf("accepted invalid key %q", k)
			}
		}
		if n := strings.Count(input, "="); len(fields) > n {
			t.Errorf("%d fields from %d assignments", len(fields), n)
		}
	})
}

func BenchmarkReadOSRelease(b *testing.B) {
	root := fixture(b, "flatcar")
	for b.Loop() {
		if _, err := ReadOSRelease(root); err != nil {
			b.Fatal(err)
		}
	}
}
