// Package unpack turns image layer streams into a directory tree, treating
// every byte of the image as hostile.
//
// A Tree is opened on an empty staging directory through an *os.Root, so
// every write is confined by the kernel-facing checks of os.Root even if a
// check of ours were wrong. On top of that confinement the package keeps its
// own record of every path it has written, and refuses, with an error naming
// the layer and the entry:
//
//   - names that are absolute, hold a ".." component, a NUL byte, or are
//     empty; entries below a symlink (a file is written at its real path);
//   - entry types other than directories, regular files, symlinks and hard
//     links (devices, fifos, sparse files, ...);
//   - absolute symlinks (trees are relocatable; an absolute link would point
//     into the host once the tree is in use) and relative ones that could
//     leave the tree;
//   - hard links to anything but a regular file this tree already holds;
//   - more entries or file bytes than Limits allow, checked at the header,
//     before any data is written.
//
// Setuid, setgid and sticky bits are removed and reported in Stats;
// ownership is not restored (everything belongs to the daemon, root).
//
// Layers are applied in one of two modes. Ordered follows the OCI image
// spec: later layers replace earlier files, and whiteouts (".wh.<name>",
// ".wh..wh..opq") remove what lower layers wrote. Disjoint is for images
// built by publish, whose layers never share a non-directory path and hold
// no whiteouts; such layers may be applied concurrently, and anything that
// breaks the promise is refused as hostile.
//
// The package is silent: it logs nothing and reports through return values
// and Stats. On any error the caller discards the whole staging directory;
// a Tree is never left "half right" on purpose.
package unpack
