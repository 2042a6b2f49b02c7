// Package systemd talks to systemd: the journal (JournalCore, with
// MESSAGE_IDs operators search for), sd_notify (Notifier) and unit control
// over D-Bus (Units).
package systemd

import (
	"fmt"
	"sort"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap/zapcore"
)

// SyslogIdentifier names the daemon's journal entries.
const SyslogIdentifier = "nvidia-driverd"

// JournalSender sends one entry to the journal; journal.Send is the real one.
type JournalSender func(message string, priority journal.Priority, vars map[string]string) error

// JournalCore is a zap core that writes each entry to the journal as
// structured fields: the message as MESSAGE, the level as PRIORITY,
// SYSLOG_IDENTIFIER=nvidia-driverd (so `journalctl -t nvidia-driverd` finds
// it, as it finds lines written to stderr), the logger name as LOGGER, and
// every zap field
// as an upper-case journal field (driver -> DRIVER), so that
// `journalctl DRIVER=550.54.14` or `journalctl MESSAGE_ID=...` finds it.
type JournalCore struct {
	zapcore.LevelEnabler
	send   JournalSender
	fields map[string]string
}

// NewJournalCore returns a core that sends entries at or above enab with
// send; a nil send means journal.Send.
func NewJournalCore(enab zapcore.LevelEnabler, send JournalSender) *JournalCore {
	if send == nil {
		send = journal.Send
	}
	return &JournalCore{LevelEnabler: enab, send: send, fields: map[string]string{}}
}

// With returns a core that adds fields to every entry.
func (c *JournalCore) With(fields []zapcore.Field) zapcore.Core {
	clone := &JournalCore{LevelEnabler: c.LevelEnabler, send: c.send, fields: make(map[string]string, len(c.fields)+len(fields))}
	for k, v := range c.fields {
		clone.fields[k] = v
	}
	addFields(clone.fields, fields)
	return clone
}

// Check adds the core when the entry's level is enabled.
func (c *JournalCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

// Write sends one entry.
func (c *JournalCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	vars := make(map[string]string, len(c.fields)+len(fields)+2)
	for k, v := range c.fields {
		vars[k] = v
	}
	addFields(vars, fields)
	vars["SYSLOG_IDENTIFIER"] = SyslogIdentifier
	if ent.LoggerName != "" {
		vars["LOGGER"] = ent.LoggerName
	}
	if ent.Caller.Defined {
		vars["CODE_FILE"] = ent.Caller.File
		vars["CODE_LINE"] = fmt.Sprint(ent.Caller.Line)
	}
	// Read as plain text (journalctl without -o verbose) an entry says
	// why it failed, not only that it did.
	msg := ent.Message
	if e := vars["ERROR"]; e != "" && !strings.Contains(msg, e) {
		msg += ": " + e
	}
	if err := c.send(msg, Priority(ent.Level), vars); err != nil {
		return fmt.Errorf("write journal entry: %w", err)
	}
	return nil
}

// Sync does nothing: every entry is sent as it is written.
func (c *JournalCore) Sync() error { return nil }

// Priority maps a zap level to a syslog priority.
func Priority(l zapcore.Level) journal.Priority {
	switch {
	case l <= zapcore.DebugLevel:
		return journal.PriDebug
	case l == zapcore.InfoLevel:
		return journal.PriInfo
	case l == zapcore.WarnLevel:
		return journal.PriWarning
	case l == zapcore.ErrorLevel:
		return journal.PriErr
	default: // DPanic, Panic, Fatal
		return journal.PriCrit
	}
}

// addFields encodes zap fields into journal variables. Nested values
// (objects, arrays) are flattened with underscores.
func addFields(dst map[string]string, fields []zapcore.Field) {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	flatten(dst, "", enc.Fields)
}

func flatten(dst map[string]string, prefix string, m map[string]any) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := FieldName(prefix + k)
		switch v := m[k].(type) {
		case map[string]any:
			flatten(dst, name+"_", v)
		case []any:
			parts := make([]string, len(v))
			for i, item := range v {
				parts[i] = fmt.Sprint(item)
			}
			dst[name] = strings.Join(parts, ",")
		default:
			dst[name] = fmt.Sprint(v)
		}
	}
}

// FieldName turns a zap field key into a valid journal field name:
// upper-case letters, digits and underscores, not starting with an
// underscore or a digit (those are reserved for journald itself).
func FieldName(key string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(key) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	name := strings.TrimLeft(b.String(), "_")
	if name == "" || (name[0] >= '0' && name[0] <= '9') {
		name = "F_" + name
	}
	return name
}
