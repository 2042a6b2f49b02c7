package engine

import (
	"fmt"
	"sort"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
)

// Fit says whether an installed tree can drive the running kernel.
type Fit struct {
	Matches bool
	// Vermagic is the vermagic of the tree's nvidia module for the running
	// kernel, or for whichever kernel the tree was built for.
	Vermagic string
	// Problem says why the tree does not match, "" when it does.
	Problem string
}

// Judge checks a tree against a kernel: the tree must hold every configured
// module under lib/modules/<release>; every module there must be readable
// with a vermagic that matches the kernel; and its nvidia module must carry
// the tree's driver version.
func Judge(t store.Tree, k Kernel, modules []string) Fit {
	var fit Fit
	here := map[string]store.Module{}
	var kernels []string
	for _, m := range t.Modules {
		if m.Kernel == k.Release {
			here[m.Name] = m
		} else if !contains(kernels, m.Kernel) {
			kernels = append(kernels, m.Kernel)
		}
		if m.Name == "nvidia" && m.Info != nil && (fit.Vermagic == "" || m.Kernel == k.Release) {
			fit.Vermagic = strings.TrimSpace(m.Info.Vermagic)
		}
	}
	if len(here) == 0 && len(kernels) == 0 && len(modules) == 0 {
		// A tree of user space alone, with nothing to load (modules: []):
		// it fits any kernel. One built for another kernel still does not.
		fit.Matches = true
		return fit
	}
	if len(here) == 0 {
		if len(kernels) == 0 {
			fit.Problem = "no kernel modules in the tree"
		} else {
			sort.Strings(kernels)
			fit.Problem = fmt.Sprintf("modules built for kernel %s, not %s", strings.Join(kernels, ", "), k.Release)
		}
		return fit
	}
	for _, name := range modules {
		if _, ok := here[modinfo.KernelName(name)]; !ok {
			fit.Problem = fmt.Sprintf("no %s module for kernel %s", name, k.Release)
			return fit
		}
	}
	// Every module for this kernel is checked, not only the configured
	// ones: any of them may end up loaded as a dependency.
	for _, m := range t.Modules {
		if m.Kernel != k.Release {
			continue
		}
		if m.Err != nil {
			fit.Problem = m.Err.Error()
			return fit
		}
		vm, err := modinfo.ParseVermagic(m.Info.Vermagic)
		if err == nil {
			err = modinfo.Check(vm, k.Release, k.Flags)
		}
		if err != nil {
			fit.Problem = fmt.Sprintf("%s: %v", m.Path, err)
			return fit
		}
		if m.Name == "nvidia" && m.Info.Version != "" && t.Driver != "" && m.Info.Version != t.Driver {
			fit.Problem = fmt.Sprintf("%s has version %s, but the tree is stored as driver %s", m.Path, m.Info.Version, t.Driver)
			return fit
		}
	}
	fit.Matches = true
	return fit
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
