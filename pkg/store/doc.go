// Package store owns the driver store on the host: one directory tree per
// driver version and OS version, <store>/<driver>/<os-version>, a `current`
// link naming the active tree and a `previous` link naming the one before.
//
// Scan reads the store. Open returns a Store for writing; one process at a
// time writes, holding Store.Lock.
//
// # Crash safety
//
// Every change to the store is a rename, so a crash at any point leaves
// either the state before the change or the state after it, plus leftovers
// that Clean removes:
//
//   - A tree is unpacked under <store>/.staging/<name>-<random>, which is
//     never taken for a tree. Commit writes the tree's MetaFile, makes the
//     whole file system durable with one syncfs(2) (cheaper than an fsync
//     per file of a tree with thousands of files), then renames the tree
//     into place and fsyncs the directories involved. A tree path therefore
//     holds a whole tree or nothing.
//   - A tree replaced at the same path (same driver and OS version, another
//     image digest) is swapped in with renameat2(RENAME_EXCHANGE), so the
//     path never lacks a tree; the old tree lands in .staging and is removed.
//   - `current` and `previous` are relative symlinks replaced by renaming a
//     new link over them, never by removing and creating them.
//   - GC first renames a tree into .staging, then removes it, so a tree
//     disappears from its path at once or not at all.
//
// Rerunning an interrupted install converges: Clean removes the
// leftovers, Commit reuses a tree already in place with the same digest,
// and Switch changes nothing when `current` already points at the tree.
//
// The package is silent: it logs nothing and returns what it did.
package store
