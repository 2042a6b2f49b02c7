package systemd

import "go.uber.org/zap"

// Journal MESSAGE_IDs for the events operators search for. Each is a
// random 128-bit ID, fixed forever once released: scripts and alerts match
// on it, so never change or reuse one. Find the entries with
//
//	journalctl MESSAGE_ID=<id>
//
// for example `journalctl MESSAGE_ID=3ea548b9b02cbfb5d41b082b5d85481b` for
// every driver activation. Log them with the MessageID field.
const (
	// MessageDriverActivated: a driver was loaded and the GPU is usable.
	MessageDriverActivated = "3ea548b9b02cbfb5d41b082b5d85481b"
	// MessageDriverSwitched: a loaded driver was replaced by another
	// version or by a tree for another kernel.
	MessageDriverSwitched = "d7a7d4b6c1cf0c146ab98f513c7c2a52"
	// MessageActivationFailed: a driver could not be activated (loading
	// modules, mounting libraries, starting units).
	MessageActivationFailed = "c526509b79eaf661b2e558bb11da9cbe"
	// MessageFetchFailed: the driver image for this host could not be
	// fetched or unpacked.
	MessageFetchFailed = "d84655e3b7866311c06038b0911822cf"
	// MessagePrefetchFailed: the driver image for a pending OS update
	// could not be fetched ahead of the reboot.
	MessagePrefetchFailed = "f8b9ca76315554c51531d29b5082460f"
)

// MessageID returns the zap field that JournalCore writes as the journal's
// MESSAGE_ID field, e.g. log.Info("driver activated",
// systemd.MessageID(systemd.MessageDriverActivated)).
func MessageID(id string) zap.Field {
	return zap.String("MESSAGE_ID", id)
}
