package main

import (
	"fmt"
	"io"

	"github.com/coreos/go-systemd/v22/journal"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"
)

// newLogger logs to the journal with structured fields when stderr is
// connected to it (a systemd service), and human console lines to stderr
// otherwise.
func newLogger(level string, stderr io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	if isJournal, _ := journal.StderrIsJournalStream(); isJournal {
		return zap.New(systemd.NewJournalCore(lvl, nil)), nil
	}
	enc := zap.NewDevelopmentEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(stderr), lvl)
	return zap.New(core), nil
}
