// Package source names driver images and, in later stages, fetches them.
//
// This file turns the configured repository and tag template into an image
// reference for one host.
package source

import (
	"bytes"
	"errors"
	"fmt"
	"path"
	"reflect"
	"regexp"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/google/go-containerregistry/pkg/name"
)

// DefaultTagTemplate is the tag scheme of the original CoreOS installer:
// <os-version>-<driver-version>, e.g. 3815.2.0-550.54.14.
const DefaultTagTemplate = "{{.OSVersion}}-{{.DriverVersion}}"

// Vars are the values a tag template may use.
type Vars struct {
	OSID          string // os-release ID: flatcar, coreos, debian, ...
	OSVersion     string // os-release VERSION_ID (VERSION when absent)
	BuildID       string // os-release BUILD_ID
	DriverVersion string // e.g. 550.54.14
	KernelRelease string // e.g. 6.1.77-flatcar
}

// Template is a parsed tag template.
type Template struct {
	text string
	tmpl *template.Template
}

// sampleVars fill every field so that ParseTemplate can dry-run a template.
var sampleVars = Vars{
	OSID:          "flatcar",
	OSVersion:     "3815.2.0",
	BuildID:       "2024-02-12-1523",
	DriverVersion: "550.54.14",
	KernelRelease: "6.1.77-flatcar",
}

// ParseTemplate parses a tag template and renders it once with sample values,
// so that a misspelt field or a template yielding an invalid tag is reported
// when the configuration is read rather than at the first fetch. It returns
// an error for a syntax error, an unknown field (naming the fields there
// are), or a sample result that is not a valid OCI tag.
func ParseTemplate(text string) (*Template, error) {
	if strings.TrimSpace(text) == "" {
		return nil, errors.New("tag template is empty")
	}
	tmpl, err := parseRestricted("tag", text)
	if err != nil {
		return nil, fmt.Errorf("parse tag template %q: %w", shown(text), err)
	}
	t := &Template{text: text, tmpl: tmpl}
	if _, err := t.Render(sampleVars); err != nil {
		return nil, err
	}
	return t, nil
}

// String returns the template text.
func (t *Template) String() string { return t.text }

// Render executes the template. It returns an error when execution fails,
// when a field the template uses is empty (an empty OS version would silently
// produce a tag for no OS at all), or when the result is not a valid tag.
func (t *Template) Render(v Vars) (string, error) {
	buf := &boundedBuffer{max: maxTagLen}
	if err := t.tmpl.Execute(buf, v); err != nil {
		return "", fmt.Errorf("render tag template %q: %s", t.text, execError(err))
	}
	for _, f := range t.usedFields() {
		if f.value(v) == "" {
			return "", fmt.Errorf("render tag template %q: %s is unknown on this host", t.text, f.name)
		}
	}
	tag := buf.String()
	if !tagRE.MatchString(tag) {
		return "", fmt.Errorf("render tag template %q: %q is not a valid tag (a letter, digit or '_', then letters, digits, '_', '.', '-', at most 128 in all)", t.text, tag)
	}
	return tag, nil
}

// tagRE is the OCI distribution spec's tag grammar.
var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)

// maxTagLen is the longest tag, and maxTemplateLen the longest template
// text accepted: with no loops and no recursion (see parseRestricted), a
// template's execution time is bounded by its length.
const (
	maxTagLen      = 128
	maxTemplateLen = 1024
)

// templateFuncs are the functions a template may call besides reading its
// fields: a few string functions, for registries whose tags differ from
// the default scheme.
var templateFuncs = template.FuncMap{
	"lower":      func(s string) (string, error) { return bounded(strings.ToLower(s)) },
	"upper":      func(s string) (string, error) { return bounded(strings.ToUpper(s)) },
	"replace":    replace,
	"trimPrefix": func(prefix, s string) string { return strings.TrimPrefix(s, prefix) },
	"trimSuffix": func(suffix, s string) string { return strings.TrimSuffix(s, suffix) },
}

// maxFuncOutput bounds what one template function returns, so that
// nested calls cannot build a large string on the way to the output.
const maxFuncOutput = 1024

func bounded(s string) (string, error) {
	if len(s) > maxFuncOutput {
		return "", fmt.Errorf("a value longer than %d bytes", maxFuncOutput)
	}
	return s, nil
}

// replace is strings.ReplaceAll with an old string to find and a bounded
// result.
func replace(old, new, s string) (string, error) {
	if old == "" {
		return "", errors.New(`replace "" ...: say what to replace`)
	}
	if n := strings.Count(s, old); n > 0 && len(s)+n*(len(new)-len(old)) > maxFuncOutput {
		return "", fmt.Errorf("a value longer than %d bytes", maxFuncOutput)
	}
	return strings.ReplaceAll(s, old, new), nil
}

// parseRestricted parses a template of at most maxTemplateLen bytes that
// may use the fields, if/else and templateFuncs, and nothing else: no
// range, with, define, template or block (so it cannot loop or recurse),
// and none of text/template's built-in functions.
func parseRestricted(name, text string) (*template.Template, error) {
	if len(text) > maxTemplateLen {
		return nil, fmt.Errorf("%d bytes is longer than %d", len(text), maxTemplateLen)
	}
	tmpl, err := template.New(name).Option("missingkey=error").Funcs(templateFuncs).Parse(text)
	if err != nil {
		return nil, errors.New(strings.TrimPrefix(err.Error(), "template: "))
	}
	if err := checkFields(tmpl); err != nil {
		return nil, err
	}
	if len(tmpl.Templates()) > 1 {
		return nil, errors.New("define and block are not allowed")
	}
	if err := checkRestricted(tmpl.Root); err != nil {
		return nil, err
	}
	return tmpl, nil
}

// allowedBuiltins are text/template's functions a template may call:
// comparisons and logic, whose cost is bounded by their arguments.
var allowedBuiltins = map[string]bool{"eq": true, "ne": true, "and": true, "or": true, "not": true}

// checkRestricted refuses the nodes parseRestricted does not allow.
func checkRestricted(n parse.Node) error {
	switch n := n.(type) {
	case nil:
		return nil
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, k := range n.Nodes {
			if err := checkRestricted(k); err != nil {
				return err
			}
		}
		return nil
	case *parse.TextNode, *parse.FieldNode, *parse.DotNode, *parse.StringNode, *parse.CommentNode, *parse.BoolNode,
		*parse.NumberNode, *parse.NilNode:
		return nil
	case *parse.ActionNode:
		return checkRestricted(n.Pipe)
	case *parse.IfNode:
		for _, k := range []parse.Node{n.Pipe, n.List, n.ElseList} {
			if err := checkRestricted(k); err != nil {
				return err
			}
		}
		return nil
	case *parse.PipeNode:
		if n == nil {
			return nil
		}
		if len(n.Decl) > 0 {
			return errors.New("variables are not allowed")
		}
		for _, c := range n.Cmds {
			if err := checkRestricted(c); err != nil {
				return err
			}
		}
		return nil
	case *parse.CommandNode:
		for _, a := range n.Args {
			if err := checkRestricted(a); err != nil {
				return err
			}
		}
		return nil
	case *parse.IdentifierNode:
		if _, ok := templateFuncs[n.Ident]; ok || allowedBuiltins[n.Ident] {
			return nil
		}
		return fmt.Errorf("function %s is not allowed; the functions are lower, upper, replace, trimPrefix, trimSuffix, eq, ne, and, or, not", n.Ident)
	case *parse.VariableNode:
		return nil // only $, the values: declarations are refused
	case *parse.ChainNode:
		return checkRestricted(n.Node)
	case *parse.RangeNode:
		return errors.New("range is not allowed")
	case *parse.WithNode:
		return errors.New("with is not allowed")
	case *parse.TemplateNode:
		return errors.New("template is not allowed")
	}
	return fmt.Errorf("%s is not allowed", n)
}

// boundedBuffer collects a template's output and fails a write past max
// bytes.
type boundedBuffer struct {
	bytes.Buffer
	max int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, fmt.Errorf("the output is longer than %d bytes", b.max)
	}
	return b.Buffer.Write(p)
}

// shown is a template text as errors show it: at most 100 bytes.
func shown(text string) string {
	if len(text) > 100 {
		return text[:100] + "..."
	}
	return text
}

type field struct {
	name  string
	value func(Vars) string
}

var fields = []field{
	{"OSID", func(v Vars) string { return v.OSID }},
	{"OSVersion", func(v Vars) string { return v.OSVersion }},
	{"BuildID", func(v Vars) string { return v.BuildID }},
	{"DriverVersion", func(v Vars) string { return v.DriverVersion }},
	{"KernelRelease", func(v Vars) string { return v.KernelRelease }},
}

// checkFields returns an error naming the first field tmpl uses that Vars
// lacks, and the fields there are. Every field of Vars is a string, so a
// field of a field (.OSID.Foo) does not exist either. Fields of a dot that
// with or range changed are left to the dry run.
func checkFields(tmpl *template.Template) error {
	for _, t := range tmpl.Templates() {
		if t.Tree == nil {
			continue
		}
		if err := checkNode(t.Root); err != nil {
			return err
		}
	}
	return nil
}

func checkNode(n parse.Node) error {
	var kids []parse.Node
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			kids = n.Nodes
		}
	case *parse.ActionNode:
		kids = []parse.Node{n.Pipe}
	case *parse.TemplateNode:
		kids = []parse.Node{n.Pipe}
	case *parse.IfNode:
		kids = []parse.Node{n.Pipe, n.List, n.ElseList}
	case *parse.RangeNode:
		kids = []parse.Node{n.Pipe, n.List, n.ElseList}
	case *parse.WithNode:
		kids = []parse.Node{n.Pipe, n.List, n.ElseList}
	case *parse.PipeNode:
		if n != nil {
			for _, c := range n.Cmds {
				kids = append(kids, c)
			}
		}
	case *parse.CommandNode:
		kids = n.Args
	case *parse.FieldNode:
		return checkPath(n.Ident)
	case *parse.VariableNode:
		if n.Ident[0] == "$" { // $ is always the Vars
			return checkPath(n.Ident[1:])
		}
	case *parse.ChainNode: // (pipeline).Field...
		if isVars(n.Node) {
			return checkPath(n.Field)
		}
		kids = []parse.Node{n.Node}
	}
	for _, k := range kids {
		if err := checkNode(k); err != nil {
			return err
		}
	}
	return nil
}

// isVars reports whether n is the Vars: . or $, maybe in parentheses.
func isVars(n parse.Node) bool {
	switch n := n.(type) {
	case *parse.DotNode:
		return true
	case *parse.VariableNode:
		return len(n.Ident) == 1 && n.Ident[0] == "$"
	case *parse.PipeNode:
		return len(n.Decl) == 0 && len(n.Cmds) == 1 && len(n.Cmds[0].Args) == 1 && isVars(n.Cmds[0].Args[0])
	}
	return false
}

// checkPath checks a chain of field names taken from the Vars.
func checkPath(idents []string) error {
	if len(idents) == 0 {
		return nil
	}
	for _, f := range fields {
		if f.name != idents[0] {
			continue
		}
		if len(idents) > 1 {
			return fmt.Errorf("unknown field .%s: .%s is a plain value, without fields", strings.Join(idents, "."), idents[0])
		}
		return nil
	}
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = "." + f.name
	}
	return fmt.Errorf("unknown field .%s; the fields are %s", idents[0], strings.Join(names, ", "))
}

// execError words an error from executing a template for whoever wrote the
// template: without text/template's position prefix, and without the Go
// name of the type behind the dot (source.Vars), which means nothing to
// them.
func execError(err error) string {
	msg := execPrefix.ReplaceAllString(err.Error(), "")
	return strings.ReplaceAll(msg, "type "+varsType, "the template's values")
}

var (
	execPrefix = regexp.MustCompile(`^template: [^:]*:\d+:\d+: executing "[^"]*" `)
	varsType   = reflect.TypeOf(Vars{}).String()
)

// usedFields reports the fields the template text mentions. A textual check
// is enough here: it only decides which empty values are worth an error.
func (t *Template) usedFields() []field {
	var used []field
	for _, f := range fields {
		if strings.Contains(t.text, "."+f.name) {
			used = append(used, f)
		}
	}
	return used
}

// UsesKernelRelease reports whether the template names the kernel release,
// i.e. whether a new kernel on a generic host needs a new image.
func (t *Template) UsesKernelRelease() bool {
	return strings.Contains(t.text, ".KernelRelease")
}

// Reference joins a repository and a rendered tag into an image reference.
// It returns an error when the repository is empty or malformed.
func Reference(repository, tag string) (name.Tag, error) {
	if repository == "" {
		return name.Tag{}, errors.New("no repository configured")
	}
	ref, err := name.NewTag(repository+":"+tag, name.StrictValidation)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image reference %s:%s: %w", repository, tag, err)
	}
	return ref, nil
}

// ValidateRepository checks that s names a repository: a registry host
// (optional) and a path, with no scheme, no credentials, no "." or ".."
// component, no tag or digest. A repository holding credentials
// (user:password@host/...) is refused without repeating it, so that the
// password reaches no log: credentials belong in the auth file.
func ValidateRepository(s string) error {
	if strings.Contains(s, "@") {
		return errors.New("repository holds credentials or a digest (it has an '@'); write host/path only and put credentials in $DOCKER_CONFIG/config.json")
	}
	if scheme, _, ok := strings.Cut(s, "://"); ok {
		return fmt.Errorf("repository %q: no scheme (%s://) please: write host/path; plain HTTP is for hosts in insecure-registries", s, scheme)
	}
	for _, c := range strings.Split(s, "/") {
		if c == "." || c == ".." {
			return fmt.Errorf("repository %q: a path component is %q", s, c)
		}
	}
	if _, err := name.NewRepository(s, name.StrictValidation); err != nil {
		return fmt.Errorf("repository %q: %w", s, err)
	}
	return nil
}

// ParseSubdir parses the image-subdir template: the directory inside an
// image that holds the driver tree, for images built by the original
// CoreOS installer (opt/nvidia/{{.DriverVersion}}/{{.OSVersion}}). It
// returns an error for a template that does not parse or render.
func ParseSubdir(text string) (*Subdir, error) {
	tmpl, err := parseRestricted("subdir", text)
	if err != nil {
		return nil, fmt.Errorf("parse image-subdir %q: %w", shown(text), err)
	}
	s := &Subdir{text: text, tmpl: tmpl}
	if _, err := s.Render(sampleVars); err != nil {
		return nil, err
	}
	return s, nil
}

// Subdir is a parsed image-subdir template.
type Subdir struct {
	text string
	tmpl *template.Template
}

// Render returns the sub-directory for v: a clean relative path. It
// returns an error when the template fails or the result is absolute,
// empty or climbs with "..".
func (s *Subdir) Render(v Vars) (string, error) {
	buf := &boundedBuffer{max: 1024}
	if err := s.tmpl.Execute(buf, v); err != nil {
		return "", fmt.Errorf("render image-subdir %q: %s", s.text, execError(err))
	}
	p := strings.Trim(buf.String(), "/")
	if p == "" || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") || strings.Contains(p, "/../") {
		return "", fmt.Errorf("render image-subdir %q: %q is not a clean relative directory", s.text, buf.String())
	}
	return p, nil
}
