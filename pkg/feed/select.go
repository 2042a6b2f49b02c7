package feed

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
)

// Skipped is a release left out of the matrix, with the reason.
type Skipped struct {
	Channel, Version, Reason string
}

// Select keeps, per channel, the last newest releases built for arch that
// name a kernel. Newer releases without arch or kernel are returned as
// skipped; releases older than those kept are not mentioned. Channels
// keep the order of their first appearance in releases; within a channel
// the newest release comes first.
func Select(releases []Release, arch string, last int) ([]Release, []Skipped) {
	byChannel := map[string][]Release{}
	var order []string
	for _, r := range releases {
		if _, ok := byChannel[r.Channel]; !ok {
			order = append(order, r.Channel)
		}
		byChannel[r.Channel] = append(byChannel[r.Channel], r)
	}
	var kept []Release
	var skipped []Skipped
	for _, ch := range order {
		rs := byChannel[ch]
		sort.SliceStable(rs, func(i, j int) bool { return CompareVersions(rs[i].Version, rs[j].Version) > 0 })
		n := 0
		for _, r := range rs {
			if n == last {
				break
			}
			switch {
			case !r.HasArch(arch):
				skipped = append(skipped, Skipped{ch, r.Version, fmt.Sprintf("not built for %s (architectures %v)", arch, r.Architectures)})
			case r.Kernel == "":
				skipped = append(skipped, Skipped{ch, r.Version, "the feed names no kernel (major_software.kernel)"})
			case !kernelRE.MatchString(r.Kernel):
				skipped = append(skipped, Skipped{ch, r.Version, fmt.Sprintf("kernel %q is not a kernel version", r.Kernel)})
			default:
				kept = append(kept, r)
				n++
			}
		}
	}
	return kept, skipped
}

// Combination is one driver image a release needs.
type Combination struct {
	OSVersion     string `json:"os_version"`
	Channel       string `json:"channel"`
	KernelRelease string `json:"kernel_release"`
	Driver        string `json:"driver"`
	Tag           string `json:"tag"`
	Image         string `json:"image"` // repository:tag
}

// Matrix describes how combinations are named.
type Matrix struct {
	Template     *source.Template // the tag template
	Repository   string           // registry/repository the images live in
	OSID         string           // os-release ID, "flatcar"
	KernelSuffix string           // appended to the feed's kernel version: "-flatcar"
}

// Combinations pairs every release with every driver, in the order of
// releases, then drivers. Combinations whose tag repeats an earlier one
// (the same release in two feeds) are dropped. It returns an error when
// the template cannot be rendered for a release.
func (m Matrix) Combinations(releases []Release, drivers []string) ([]Combination, error) {
	var out []Combination
	seen := map[string]bool{}
	for _, r := range releases {
		kernel := r.Kernel + m.KernelSuffix
		for _, d := range drivers {
			tag, err := m.Template.Render(source.Vars{
				OSID: m.OSID, OSVersion: r.Version, KernelRelease: kernel, DriverVersion: d,
			})
			if err != nil {
				return nil, fmt.Errorf("%s %s, driver %s: %w", r.Channel, r.Version, d, err)
			}
			if seen[tag] {
				continue
			}
			seen[tag] = true
			ref, err := source.Reference(m.Repository, tag)
			if err != nil {
				return nil, err
			}
			out = append(out, Combination{
				OSVersion: r.Version, Channel: r.Channel, KernelRelease: kernel,
				Driver: d, Tag: tag, Image: ref.String(),
			})
		}
	}
	return out, nil
}

// Missing returns the combinations whose image src does not have, in the
// order given. An image is missing only when the registry says so (404,
// MANIFEST_UNKNOWN, NAME_UNKNOWN); any other failure (authentication, a
// server error after retries, a refused image, an image labelled for
// another kernel) is an error, so that a broken registry never reads as
// "everything must be rebuilt". Up to jobs checks run at once.
func Missing(ctx context.Context, src source.Source, combos []Combination, jobs int) ([]Combination, error) {
	if jobs < 1 {
		jobs = 1
	}
	missing := make([]bool, len(combos))
	errs := make([]error, len(combos))
	sem := make(chan struct{}, jobs)
	var wg sync.WaitGroup
	for i, c := range combos {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			missing[i], errs[i] = check(ctx, src, c)
		}()
	}
	wg.Wait()
	if err := joinFirst(errs, 3); err != nil {
		return nil, err
	}
	var out []Combination
	for i, c := range combos {
		if missing[i] {
			out = append(out, c)
		}
	}
	return out, nil
}

func check(ctx context.Context, src source.Source, c Combination) (bool, error) {
	img, err := src.Image(ctx, c.Tag)
	if errors.Is(err, source.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("check %s: %w", c.Image, err)
	}
	if k := img.Labels[publish.LabelKernel]; k != "" && k != c.KernelRelease {
		return false, fmt.Errorf("check %s: the image is labelled for kernel %s, but Flatcar %s runs %s",
			c.Image, k, c.OSVersion, c.KernelRelease)
	}
	return false, nil
}

// joinFirst joins the first n non-nil errors and counts the rest, so that
// a registry refusing every request gives a few lines, not hundreds.
func joinFirst(errs []error, n int) error {
	var kept []error
	more := 0
	for _, err := range errs {
		switch {
		case err == nil:
		case len(kept) < n:
			kept = append(kept, err)
		default:
			more++
		}
	}
	if more > 0 {
		kept = append(kept, fmt.Errorf("and %d more checks failed", more))
	}
	return errors.Join(kept...)
}
