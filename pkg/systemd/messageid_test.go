package systemd

import (
	"regexp"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestMessageIDs(t *testing.T) {
	ids := map[string]string{
		"MessageDriverActivated":  MessageDriverActivated,
		"MessageDriverSwitched":   MessageDriverSwitched,
		"MessageActivationFailed": MessageActivationFailed,
		"MessageFetchFailed":      MessageFetchFailed,
		"MessagePrefetchFailed":   MessagePrefetchFailed,
	}

	t.Run("each is 128 bits of lowercase hex and unique", func(t *testing.T) {
		form := regexp.MustCompile(`^[0-9a-f]{32}$`)
		seen := map[string]string{}
		for name, id := range ids {
			if !form.MatchString(id) {
				t.Errorf("%s = %q, want 32 lowercase hex digits", name, id)
			}
			if other, ok := seen[id]; ok {
				t.Errorf("%s and %s share %s", name, other, id)
			}
			seen[id] = name
		}
	})

	t.Run("the field reaches the journal as MESSAGE_ID", func(t *testing.T) {
		var got []sent
		log := zap.New(NewJournalCore(zapcore.InfoLevel, capture(&got)))
		log.Info("driver activated", MessageID(MessageDriverActivated))
		if len(got) != 1 || got[0].vars["MESSAGE_ID"] != MessageDriverActivated {
			t.Fatalf("sent %+v", got)
		}
	})
}
