// Package modinfo reads what a Linux kernel module file says about itself:
// the key=value strings in its .modinfo ELF section (name, version,
// vermagic, depends, ...), whether a module signature is appended, and how
// the file is compressed.
//
// The package only reads files; it knows nothing about the host. Check
// compares a module's vermagic with a kernel release and flags the caller
// supplies.
//
// Corrupt or hostile input yields an error, never a panic, and memory use is
// bounded: a plain .ko is read in place through io.ReaderAt, a compressed one
// is decompressed into memory up to MaxDecompressedSize, and the .modinfo
// section is read only if it is at most MaxModinfoSize bytes.
package modinfo
