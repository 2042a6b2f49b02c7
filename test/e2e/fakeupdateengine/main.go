// Command fakeupdateengine stands in for Flatcar's update_engine on a
// guest's system bus: it owns com.coreos.update1, answers GetStatus, and
// after -after reports a staged update of version -version with a
// StatusUpdate signal (DOWNLOADING, then UPDATED_NEED_REBOOT), as
// update_engine does once an update is written to the passive partition.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/nextboot"
)

type manager struct {
	mu      sync.Mutex
	op      string
	version string
	size    int64
}

// GetStatus has update_engine's signature: last checked time, progress,
// current operation, new version, new size.
func (m *manager) GetStatus() (int64, float64, string, string, int64, *dbus.Error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return time.Now().Unix(), progress(m.op), m.op, m.version, m.size, nil
}

func progress(op string) float64 {
	if op == nextboot.StatusUpdatedNeedReboot {
		return 1
	}
	return 0
}

func (m *manager) set(conn *dbus.Conn, op, version string) error {
	m.mu.Lock()
	m.op, m.version = op, version
	m.mu.Unlock()
	return conn.Emit(nextboot.ObjectPath, nextboot.Interface+".StatusUpdate",
		time.Now().Unix(), progress(op), op, version, m.size)
}

func main() {
	version := flag.String("version", "", "the staged OS version to announce")
	after := flag.Duration("after", 2*time.Second, "wait this long before announcing")
	flag.Parse()
	if *version == "" {
		log.Fatal("-version is required")
	}
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		log.Fatalf("system bus: %v", err)
	}
	m := &manager{op: nextboot.StatusIdle, size: 512 << 20}
	if err := conn.Export(m, nextboot.ObjectPath, nextboot.Interface); err != nil {
		log.Fatal(err)
	}
	reply, err := conn.RequestName(nextboot.BusName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		log.Fatalf("own %s: reply %v, %v", nextboot.BusName, reply, err)
	}
	fmt.Println("fake update_engine on the system bus")
	time.Sleep(*after)
	for _, op := range []string{nextboot.StatusDownloading, nextboot.StatusUpdatedNeedReboot} {
		if err := m.set(conn, op, *version); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("announced %s %s\n", op, *version)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
