package kmod

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"golang.org/x/sys/unix"
)

// explain turns the error of finit_module for node n, loaded with flags,
// into an error naming the module and path, saying what the kernel's
// errno means here, and wrapping err (and ErrUnsigned for a signature
// refusal).
//
// said is what the kernel logged for the module while it was loading
// (kernelSaid); it is quoted after the meaning.
func (p *planner) explain(n *node, flags int, err error, said string) error {
	name, path := n.step.Name, n.step.Path
	var errno unix.Errno
	errors.As(err, &errno)
	switch {
	case (errno == unix.EKEYREJECTED || errno == unix.ENOKEY) && p.sigs[name] != nil:
		return fmt.Errorf("load module %s: %s: %w: %s%s: %w", name, path, ErrUnsigned, p.untrusted(p.sigs[name], said), said, err)
	case errno == unix.EKEYREJECTED:
		return fmt.Errorf("load module %s: %s: %w (unsigned, or signed with a key it does not trust)%s: %w", name, path, ErrUnsigned, said, err)
	case errno == unix.EPERM && p.enforced:
		return fmt.Errorf("load module %s: %s: %w (%s)%s: %w", name, path, ErrUnsigned, p.why, said, err)
	case flags&compressedFile != 0 && (errno == unix.EOPNOTSUPP || errno == unix.EINVAL):
		return fmt.Errorf("load module %s: %s: the kernel cannot load compressed modules (needs Linux 5.17+ with CONFIG_MODULE_DECOMPRESS)%s: %w", name, path, said, err)
	}
	return fmt.Errorf("load module %s: %s: %s%s: %w", name, path, p.meaning(n, errno), said, err)
}

// untrusted says which certificate sig names and which keys the kernel
// trusts, for a signature the kernel refused. The kernel's own words (said)
// tell an unknown key ("unavailable key") from a signature that did not
// verify; the certificate is named by its issuer and serial number, as
// PKCS#7 does.
func (p *planner) untrusted(sig *modinfo.Signature, said string) string {
	who := "an unnamed certificate"
	switch {
	case sig.Signer != "" && sig.KeyID != "":
		who = fmt.Sprintf("a certificate issued by %q (serial %s)", sig.Signer, sig.KeyID)
	case sig.KeyID != "":
		who = "the key with identifier " + sig.KeyID
	}
	verdict := "which the kernel did not accept (a key it does not trust, a signature that does not verify, or crypto it lacks)"
	if strings.Contains(said, "unavailable key") {
		verdict = "a key the kernel does not trust"
	}
	return fmt.Sprintf("signed with %s, %s; it trusts %s", who, verdict, p.trustedKeys())
}

// trustedKeys names the keys the kernel checks module signatures against,
// each quoted with its keyring.
func (p *planner) trustedKeys() string {
	keys := p.req.Host.TrustedKeys()
	if len(keys) == 0 {
		return "no key /proc/keys lists"
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = strconv.Quote(k.Description)
		if k.Keyring != "" {
			names[i] += " in " + k.Keyring
		}
	}
	return strings.Join(names, ", ")
}

// kernelSaidMax is how many kernel log lines a load error quotes.
const kernelSaidMax = 6

// kernelSaid quotes what the kernel logged about module name since start
// (its own "name: ..." lines and NVIDIA's "NVRM: ..." lines), as
// `; the kernel said: "...", "..."`, or "" when it said nothing or its
// log cannot be read. Taint notices say nothing about a failure and are
// left out.
func (p *planner) kernelSaid(name string, start time.Duration) string {
	if p.req.Host == nil {
		return ""
	}
	// The log's clock and CLOCK_MONOTONIC can differ by a little.
	msgs, err := p.req.Host.KernelLog(start-250*time.Millisecond, func(text string) bool {
		if strings.Contains(text, "taints kernel") {
			return false
		}
		return strings.Contains(text, "NVRM:") || strings.HasPrefix(text, name+": ") ||
			strings.HasPrefix(text, "Loading of ") || // the signature check's verdict
			strings.HasPrefix(text, strings.ReplaceAll(name, "_", "-")+": ")
	}, kernelSaidMax)
	if err != nil || len(msgs) == 0 {
		return ""
	}
	quoted := make([]string, len(msgs))
	for i, m := range msgs {
		t := strings.TrimSpace(m.Text)
		if len(t) > 200 {
			t = t[:200] + "..."
		}
		quoted[i] = strconv.Quote(t)
	}
	return "; the kernel said: " + strings.Join(quoted, ", ")
}

// meaning says what errno from finit_module means for node n.
func (p *planner) meaning(n *node, errno unix.Errno) string {
	switch errno {
	case unix.ENOEXEC:
		return "invalid module format: the kernel refused its ELF or its vermagic (see dmesg)"
	case unix.EPERM:
		return "not permitted: needs CAP_SYS_MODULE, and kernel.modules_disabled must be 0"
	case unix.ENODEV:
		return "no NVIDIA GPU the module can drive"
	case unix.ENOENT:
		return p.unknownSymbol(n)
	case unix.EBUSY, unix.EAGAIN:
		return "the kernel is busy loading or unloading this module; retry"
	}
	return "finit_module"
}

// unknownSymbol explains ENOENT from finit_module, which means the module
// uses a symbol no loaded module exports: it names the first module of
// depends= that is neither live nor built in, or else points at dmesg.
func (p *planner) unknownSymbol(n *node) string {
	for _, d := range n.deps {
		if !p.present(d) {
			return fmt.Sprintf("unknown symbol: dependency %s is not loaded", d)
		}
	}
	return "unknown symbol (see dmesg)"
}

// present reports whether module name is live or built into the kernel,
// by sysfs or by the plan; an unreadable sysfs counts as absent.
func (p *planner) present(name string) bool {
	if n, ok := p.byName[name]; ok && n.step.Skipped == skippedBuiltIn {
		return true
	}
	sys, err := readSysModule(p.req.Host, name)
	return err == nil && (sys.live() || sys.builtIn())
}
