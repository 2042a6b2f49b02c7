package unpack

import (
	"io/fs"
	"path"
	"strings"
)

// kind is what a path in the tree is.
type kind uint8

const (
	kindDir kind = iota + 1
	kindFile
	kindSymlink
)

// String returns the kind as messages name it.
func (k kind) String() string {
	switch k {
	case kindDir:
		return "directory"
	case kindFile:
		return "regular file"
	case kindSymlink:
		return "symlink"
	}
	return "unknown"
}

// node is the record of one path the tree holds. The records, not the
// disk, decide what an entry may do: whether a parent is a real directory,
// whether a hard link target is a regular file, which layer wrote what.
// They are complete because every change goes through this package while
// Tree.mu is held.
type node struct {
	kind  kind
	layer int    // layer index of the Apply call that wrote it, for messages
	gen   uint64 // generation of the Apply call that wrote it (or claimed it, see clearLower)

	// minGen and maxGen bound the generations in the node's subtree,
	// itself included. Removals may leave minGen lower than the truth
	// and maxGen higher; both errors only cost extra work, and during
	// an Ordered Apply maxGen is exact for its own generation, which is
	// all clearLower compares it with.
	minGen, maxGen uint64

	mode     fs.FileMode // a directory's permissions, as declared
	declared bool        // a directory entry declared it (not only implied by a child)

	children map[string]*node // a directory's entries, by name
}

// newNode returns a node of kind k written by layer (generation gen).
func newNode(k kind, layer int, gen uint64) *node {
	return &node{kind: k, layer: layer, gen: gen, minGen: gen, maxGen: gen}
}

// spot is where an entry goes: its parent directory and the chain of
// directories from the tree root down to it.
type spot struct {
	name   string  // clean tree path
	base   string  // last component
	chain  []*node // tree root ... parent
	parent *node
}

// existing returns the node at the spot, or nil.
func (s *spot) existing() *node {
	return s.parent.children[s.base]
}

// put records n at the spot, replacing any node there, and widens the
// generation bounds of every ancestor.
func (s *spot) put(n *node) {
	if s.parent.children == nil {
		s.parent.children = map[string]*node{}
	}
	s.parent.children[s.base] = n
	for _, a := range s.chain {
		a.minGen = min(a.minGen, n.minGen)
		a.maxGen = max(a.maxGen, n.maxGen)
	}
}

// drop forgets the node at the spot.
func (s *spot) drop() {
	delete(s.parent.children, s.base)
}

// locate walks from the tree root to the parent of the clean tree path
// name (not "."). Tree.mu must be held.
//
// Missing parent directories are created, on disk and in the record, when
// a is non-nil (as written by a's layer); when a is nil locate returns
// (nil, nil) at the first missing one. It returns a refusal when a parent
// is a symlink (entries are written at their real path, never through a
// link, even one inside the tree) or not a directory, and an error when a
// directory cannot be created.
func (t *Tree) locate(name string, a *applier) (*spot, error) {
	dir, base := path.Split(name)
	s := &spot{name: name, base: base, parent: t.top, chain: []*node{t.top}}
	walked := ""
	for c := range strings.SplitSeq(strings.TrimSuffix(dir, "/"), "/") {
		if c == "" {
			break // name is in the tree root
		}
		walked = path.Join(walked, c)
		n := s.parent.children[c]
		switch {
		case n == nil && a == nil:
			return nil, nil
		case n == nil:
			var err error
			if n, err = a.implyDir(s, walked, c); err != nil {
				return nil, err
			}
		case n.kind == kindSymlink:
			return nil, refuse("parent %q is a symlink; entries must be written at their real path", walked)
		case n.kind != kindDir:
			return nil, refuse("parent %q is a %s, not a directory", walked, n.kind)
		}
		s.parent = n
		s.chain = append(s.chain, n)
	}
	return s, nil
}

// lookup returns the node at the clean tree path name and the spot it is
// at, or a nil node if there is none. It returns a refusal as locate does
// when a parent is a symlink or not a directory. Tree.mu must be held.
func (t *Tree) lookup(name string) (*node, *spot, error) {
	s, err := t.locate(name, nil)
	if s == nil || err != nil {
		return nil, nil, err
	}
	return s.existing(), s, nil
}

// clearLower removes from the disk and the record everything below the
// directory dir (at tree path p) that an Apply call before generation gen
// wrote, keeping what gen itself wrote: per the OCI image spec, whiteouts
// and opaque markers hide lower layers only. Directories that hold kept
// entries stay, and are claimed by gen, so that the next marker in the
// same layer finds nothing to do. Tree.mu must be held.
//
// The cost is bounded by what is removed plus the directories that hold
// both: a subtree with nothing older than gen (minGen) is skipped, and one
// with nothing from gen (maxGen) goes in one RemoveAll.
//
// It returns the first error removing a path gives.
func (t *Tree) clearLower(dir *node, p string, gen uint64, layer int) error {
	for name, c := range dir.children {
		if c.minGen >= gen {
			continue
		}
		cp := path.Join(p, name)
		if c.maxGen < gen {
			// RemoveAll does not follow a symlink at cp, and os.Root
			// keeps it inside the tree.
			if err := t.root.RemoveAll(cp); err != nil {
				return err
			}
			delete(dir.children, name)
			continue
		}
		// Only a directory can hold both generations.
		if err := t.clearLower(c, cp, gen, layer); err != nil {
			return err
		}
		c.claim(gen, layer)
	}
	return nil
}

// claim marks a directory whose lower contents clearLower removed as
// written by generation gen, whose entries it now only holds.
func (n *node) claim(gen uint64, layer int) {
	n.gen, n.layer, n.minGen = gen, layer, gen
	n.maxGen = max(n.maxGen, gen)
}
