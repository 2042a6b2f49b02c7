// Command mkhost lays out a sample host tree for the demo:
//
//	go run ./test/cmd/mkhost [-fixtures test/fixtures/hosts] NAME DIR
//	go run ./test/cmd/mkhost -list
//	go run ./test/cmd/mkhost -driver-tree DRIVER KERNEL VERMAGIC DIR
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
)

func main() {
	fixtures := flag.String("fixtures", "test/fixtures/hosts", "directory of committed host fixtures")
	list := flag.Bool("list", false, "print the sample host names and what each shows")
	tree := flag.Bool("driver-tree", false, "lay out a driver tree: DRIVER KERNEL VERMAGIC DIR")
	flag.Parse()
	if *tree {
		if flag.NArg() != 4 {
			fmt.Fprintln(os.Stderr, "usage: mkhost -driver-tree DRIVER KERNEL VERMAGIC DIR")
			os.Exit(2)
		}
		if err := hostfixture.DriverTree(flag.Arg(3), flag.Arg(0), flag.Arg(1), flag.Arg(2)); err != nil {
			fmt.Fprintf(os.Stderr, "mkhost: driver tree: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if *list {
		for _, n := range hostfixture.Names() {
			fmt.Printf("%s\t%s\n", n, hostfixture.Specs[n].About)
		}
		return
	}
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: mkhost [-fixtures DIR] NAME DIR | -list")
		os.Exit(2)
	}
	spec, ok := hostfixture.Specs[flag.Arg(0)]
	if !ok {
		fmt.Fprintf(os.Stderr, "mkhost: no sample host %q (see -list)\n", flag.Arg(0))
		os.Exit(2)
	}
	if err := hostfixture.Make(*fixtures, flag.Arg(1), spec); err != nil {
		fmt.Fprintf(os.Stderr, "mkhost: %s: %v\n", flag.Arg(0), err)
		os.Exit(1)
	}
}
