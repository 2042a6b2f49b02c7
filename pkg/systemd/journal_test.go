package systemd

import (
	"errors"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

type sent struct {
	msg  string
	pri  journal.Priority
	vars map[string]string
}

func capture(out *[]sent) JournalSender {
	return func(msg string, pri journal.Priority, vars map[string]string) error {
		*out = append(*out, sent{msg, pri, vars})
		return nil
	}
}

func TestJournalCore(t *testing.T) {
	t.Run("fields become upper-case journal fields and levels priorities", func(t *testing.T) {
		var got []sent
		log := zap.New(NewJournalCore(zapcore.InfoLevel, capture(&got))).Named("engine").With(zap.String("driver", "550.54.14"))
		log.Info("driver activated", zap.String("MESSAGE_ID", "0f1a"), zap.String("kernel-release", "6.1.77-flatcar"), zap.Int("modules", 4))
		log.Warn("slow", zap.Strings("steps", []string{"fetch", "unpack"}))
		log.Debug("not sent")
		if len(got) != 2 {
			t.Fatalf("sent %d entries, want 2", len(got))
		}
		e := got[0]
		if e.msg != "driver activated" || e.pri != journal.PriInfo {
			t.Fatalf("%+v", e)
		}
		want := map[string]string{"DRIVER": "550.54.14", "MESSAGE_ID": "0f1a", "KERNEL_RELEASE": "6.1.77-flatcar", "MODULES": "4", "LOGGER": "engine", "SYSLOG_IDENTIFIER": "nvidia-driverd"}
		for k, v := range want {
			if e.vars[k] != v {
				t.Errorf("%s = %q, want %q", k, e.vars[k], v)
			}
		}
		if got[1].pri != journal.PriWarning || got[1].vars["STEPS"] != "fetch,unpack" {
			t.Errorf("%+v", got[1])
		}
	})
	t.Run("errors are fields too", func(t *testing.T) {
		var got []sent
		zap.New(NewJournalCore(zapcore.InfoLevel, capture(&got))).Error("activation failed", zap.Error(errors.New("ENOEXEC")))
		if got[0].pri != journal.PriErr || got[0].vars["ERROR"] != "ENOEXEC" {
			t.Fatalf("%+v", got[0])
		}
	})
	t.Run("read as plain text, an entry says why it failed", func(t *testing.T) {
		var got []sent
		log := zap.New(NewJournalCore(zapcore.InfoLevel, capture(&got)))
		log.Error("fetch failed: 3815.2.0-550.54.14", zap.Error(errors.New("no such image")))
		log.Error("load module nvidia: ENOEXEC", zap.Error(errors.New("ENOEXEC")))
		if got[0].msg != "fetch failed: 3815.2.0-550.54.14: no such image" || got[1].msg != "load module nvidia: ENOEXEC" {
			t.Errorf("messages %q, %q", got[0].msg, got[1].msg)
		}
	})
	t.Run("a send error is returned", func(t *testing.T) {
		c := NewJournalCore(zapcore.InfoLevel, func(string, journal.Priority, map[string]string) error { return errors.New("no socket") })
		if err := c.Write(zapcore.Entry{Message: "x"}, nil); err == nil {
			t.Fatal("no error")
		}
	})
}

func TestFieldName(t *testing.T) {
	for in, want := range map[string]string{"driver": "DRIVER", "kernel.release": "KERNEL_RELEASE", "_private": "PRIVATE", "9lives": "F_9LIVES", "": "F_"} {
		if got := FieldName(in); got != want {
			t.Errorf("FieldName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPriority(t *testing.T) {
	for l, want := range map[zapcore.Level]journal.Priority{zapcore.DebugLevel: 7, zapcore.InfoLevel: 6, zapcore.WarnLevel: 4, zapcore.ErrorLevel: 3, zapcore.FatalLevel: 2} {
		if got := Priority(l); got != want {
			t.Errorf("Priority(%s) = %d, want %d", l, got, want)
		}
	}
}
