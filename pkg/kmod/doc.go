// Package kmod loads the kernel modules of an NVIDIA driver tree into the
// running kernel, unloads them again, and creates their device nodes.
//
// Plan works out what Load would do: the load order, derived from each
// module's depends= field (never a fixed list), the in-tree prerequisites
// the driver needs from the host's modules.dep, the parameters from the
// configuration and the tree's etc/modprobe.d, and which modules are
// already loaded or built in. Load then opens each module file, checks
// its vermagic on the open file descriptor, so that the bytes checked are
// the bytes loaded, and hands the descriptor to finit_module(2) through
// Syscalls.
//
// The vermagic check is ours, not the kernel's: a kernel built with
// CONFIG_MODVERSIONS accepts a module built for another release as long as
// the CRCs of the symbols it uses match, which is exactly the case of a
// driver built for the kernel before an OS update.
//
// In-tree prerequisites compressed with xz, zstd or gzip are handed to the
// kernel compressed, with MODULE_INIT_COMPRESSED_FILE; that needs Linux
// 5.17 or later built with CONFIG_MODULE_DECOMPRESS (and the matching
// CONFIG_MODULE_COMPRESS_* decompressor), which distributions that ship
// compressed modules have.
//
// What kmod knows of the host (/sys/module, modules.dep, /proc) it asks a
// Host, *hostinfo.Host in production; device nodes are made in the host
// tree that Host gives, every path resolved inside it. The package logs
// nothing; what it did and why
// it stopped are in its return values.
package kmod
