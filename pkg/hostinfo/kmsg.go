package hostinfo

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	kmsgPath = "/dev/kmsg"
	// limitKmsg bounds what one look at the kernel log reads: the ring
	// buffer is 256 KiB to a few MiB, and only its tail is of interest.
	limitKmsg = 8 << 20
)

// KernelMessage is one record of the kernel log.
type KernelMessage struct {
	At   time.Duration // since boot, on the kernel's monotonic clock
	Text string
}

// KernelLog returns the records of the kernel log (/dev/kmsg) stamped at
// or after since (CLOCK_MONOTONIC, as Monotonic returns it) whose text
// passes keep, at most max of them, the newest kept. A record is
// "PRIO,SEQ,USEC,FLAGS;TEXT" with continuation lines (key=value, starting
// with a space) that are left out. /dev/kmsg is read without blocking: one
// record a read, EAGAIN at the end, EPIPE when records were overwritten
// while reading (the read goes on from the oldest left). A host tree whose
// dev/kmsg is a regular file (a test fixture) is read as lines. A host
// without /dev/kmsg has no messages: nil, nil.
func (h *Host) KernelLog(since time.Duration, keep func(string) bool, max int) ([]KernelMessage, error) {
	p, err := h.fs.Path(kmsgPath)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the kernel log %s: %w", h.hostPath(kmsgPath), err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("read the kernel log %s: %w", h.hostPath(kmsgPath), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR && st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("read the kernel log %s: neither the kernel's log device nor a file", h.hostPath(kmsgPath))
	}

	var kept []KernelMessage
	add := func(rec string) {
		m, ok := parseKmsg(rec)
		if !ok || m.At < since || (keep != nil && !keep(m.Text)) {
			return
		}
		kept = append(kept, m)
		if max > 0 && len(kept) > max {
			kept = kept[1:]
		}
	}
	buf := make([]byte, 16<<10) // a record is at most ~8 KiB
	var total, retries int
	var partial string // a regular file's read may end mid-line
	for total < limitKmsg {
		n, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EPIPE), errors.Is(err, unix.EINTR):
			if retries++; retries > 1000 { // overwritten faster than read
				return kept, nil
			}
			continue
		case errors.Is(err, unix.EAGAIN):
			return kept, nil
		case err != nil:
			return kept, fmt.Errorf("read the kernel log %s: %w", h.hostPath(kmsgPath), err)
		case n == 0:
			if partial != "" {
				add(partial)
			}
			return kept, nil
		}
		total += n
		lines := strings.Split(partial+string(buf[:n]), "\n")
		partial = lines[len(lines)-1]
		for _, l := range lines[:len(lines)-1] {
			add(l)
		}
	}
	return kept, nil
}

// parseKmsg parses one line of /dev/kmsg; ok is false for a continuation
// line or one it cannot read.
func parseKmsg(line string) (KernelMessage, bool) {
	prefix, text, ok := strings.Cut(line, ";")
	if !ok || strings.HasPrefix(line, " ") {
		return KernelMessage{}, false
	}
	fields := strings.Split(prefix, ",")
	if len(fields) < 3 {
		return KernelMessage{}, false
	}
	usec, err := strconv.ParseInt(fields[2], 10, 64)
	if err != nil || usec < 0 {
		return KernelMessage{}, false
	}
	return KernelMessage{At: time.Duration(usec) * time.Microsecond, Text: unescapeKmsg(text)}, true
}

// unescapeKmsg undoes /dev/kmsg's \xHH escapes of unprintable bytes,
// turning them into spaces: a message quoted in an error stays one line.
func unescapeKmsg(s string) string {
	if !strings.Contains(s, `\x`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) && s[i+1] == 'x' {
			if _, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
				b.WriteByte(' ')
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Monotonic is now on the clock kernel log records are stamped with.
func Monotonic() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
