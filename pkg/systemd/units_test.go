package systemd

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

const persistenced = "nvidia-persistenced.service"

// testTimeout bounds every wait in these tests; none is expected to reach it.
const testTimeout = 30 * time.Second

// setup starts a bus with a fake systemd scripted with units, and Units
// connected to it.
func setup(t *testing.T, units map[string]fakeUnit) (*testBus, *fakeSystemd, *Units) {
	t.Helper()
	bus, _ := newTestBus(t)
	fake := newFakeSystemd(t, bus.addr, units)
	u := NewUnits(bus.connector())
	t.Cleanup(u.Close)
	return bus, fake, u
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestUnitsStart(t *testing.T) {
	t.Run("a job that ends done is success", func(t *testing.T) {
		_, fake, u := setup(t, map[string]fakeUnit{
			persistenced: {Job: "done", LoadState: "loaded", ActiveState: "active", SubState: "running", Result: "success"},
		})
		ctx := testContext(t)
		if err := u.Start(ctx, persistenced); err != nil {
			t.Fatal(err)
		}
		fake.expect(ctx, t, "StartUnit "+persistenced+" replace")
		state, err := u.ActiveState(ctx, persistenced)
		if err != nil || state != "active" {
			t.Fatalf("ActiveState = %q, %v; want active", state, err)
		}
	})

	t.Run("a failed job is an error naming the unit and its state", func(t *testing.T) {
		_, _, u := setup(t, map[string]fakeUnit{
			persistenced: {Job: "failed", LoadState: "loaded", ActiveState: "failed", SubState: "failed", Result: "exit-code"},
		})
		err := u.Start(testContext(t), persistenced)
		want := "start nvidia-persistenced.service: job failed: ActiveState=failed SubState=failed Result=exit-code"
		if err == nil || err.Error() != want {
			t.Fatalf("err = %v, want %s", err, want)
		}
		var jobErr *JobError
		if !errors.As(err, &jobErr) || jobErr.Result != "failed" || jobErr.UnitResult != "exit-code" || jobErr.StateErr != nil {
			t.Fatalf("err = %#v", err)
		}
	})

	t.Run("every result but done is an error", func(t *testing.T) {
		for _, result := range []string{"timeout", "canceled", "dependency", "skipped"} {
			_, _, u := setup(t, map[string]fakeUnit{
				persistenced: {Job: result, LoadState: "loaded", ActiveState: "inactive", SubState: "dead", Result: "success"},
			})
			err := u.Start(testContext(t), persistenced)
			var jobErr *JobError
			if !errors.As(err, &jobErr) || jobErr.Result != result || jobErr.ActiveState != "inactive" {
				t.Errorf("%s: err = %v", result, err)
			}
		}
	})

	t.Run("a unit type without Result reports the unit's state only", func(t *testing.T) {
		_, _, u := setup(t, map[string]fakeUnit{
			"gpu.target": {Job: "dependency", LoadState: "loaded", ActiveState: "inactive", SubState: "dead"},
		})
		err := u.Start(testContext(t), "gpu.target")
		want := "start gpu.target: job dependency: ActiveState=inactive SubState=dead Result="
		if err == nil || err.Error() != want {
			t.Fatalf("err = %v, want %s", err, want)
		}
	})

	t.Run("a unit systemd cannot find is an error from StartUnit", func(t *testing.T) {
		_, _, u := setup(t, map[string]fakeUnit{})
		err := u.Start(testContext(t), "missing.service")
		if err == nil || !isDBusError(err, errNoSuchUnit) || !strings.Contains(err.Error(), "start missing.service: Unit missing.service not found.") {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("the context bounds the wait when JobRemoved never comes", func(t *testing.T) {
		_, fake, u := setup(t, map[string]fakeUnit{
			persistenced: {Job: "", LoadState: "loaded", ActiveState: "activating", SubState: "start"},
		})
		ctx, cancel := context.WithTimeout(testContext(t), 200*time.Millisecond)
		defer cancel()
		err := u.Start(ctx, persistenced)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "start nvidia-persistenced.service: wait for job result") {
			t.Fatalf("err = %v, want the deadline", err)
		}
		fake.expect(testContext(t), t, "StartUnit "+persistenced+" replace")
	})
}

func TestUnitsStop(t *testing.T) {
	t.Run("a job that ends done is success", func(t *testing.T) {
		_, fake, u := setup(t, map[string]fakeUnit{
			persistenced: {Job: "done", LoadState: "loaded", ActiveState: "inactive", SubState: "dead", Result: "success"},
		})
		ctx := testContext(t)
		if err := u.Stop(ctx, persistenced); err != nil {
			t.Fatal(err)
		}
		fake.expect(ctx, t, "StopUnit "+persistenced+" replace")
	})

	t.Run("an unknown unit is already stopped", func(t *testing.T) {
		_, fake, u := setup(t, map[string]fakeUnit{})
		ctx := testContext(t)
		if err := u.Stop(ctx, "missing.service"); err != nil {
			t.Fatal(err)
		}
		fake.expect(ctx, t, "StopUnit missing.service replace")
	})

	t.Run("a failed stop is an error naming the unit and its state", func(t *testing.T) {
		_, _, u := setup(t, map[string]fakeUnit{
			persistenced: {Job: "timeout", LoadState: "loaded", ActiveState: "failed", SubState: "final-sigkill", Result: "timeout"},
		})
		err := u.Stop(testContext(t), persistenced)
		want := "stop nvidia-persistenced.service: job timeout: ActiveState=failed SubState=final-sigkill Result=timeout"
		if err == nil || err.Error() != want {
			t.Fatalf("err = %v, want %s", err, want)
		}
	})
}

func TestUnitsActiveState(t *testing.T) {
	t.Run("reads the property from the unit's escaped object path", func(t *testing.T) {
		_, _, u := setup(t, map[string]fakeUnit{
			persistenced: {LoadState: "loaded", ActiveState: "failed", SubState: "failed"},
		})
		state, err := u.ActiveState(testContext(t), persistenced)
		if err != nil || state != "failed" {
			t.Fatalf("ActiveState = %q, %v; want failed", state, err)
		}
	})

	t.Run("an object systemd does not answer for is an error", func(t *testing.T) {
		_, _, u := setup(t, map[string]fakeUnit{})
		_, err := u.ActiveState(testContext(t), "missing.service")
		if err == nil || !strings.HasPrefix(err.Error(), "read ActiveState of missing.service: ") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestUnitsReconnect(t *testing.T) {
	done := map[string]fakeUnit{
		persistenced: {Job: "done", LoadState: "loaded", ActiveState: "active", SubState: "running", Result: "success"},
	}

	t.Run("a call after the bus restarted connects again", func(t *testing.T) {
		bus, first := newTestBus(t)
		newFakeSystemd(t, bus.addr, done)
		u := NewUnits(bus.connector())
		t.Cleanup(u.Close)
		ctx := testContext(t)
		if err := u.Start(ctx, persistenced); err != nil {
			t.Fatal(err)
		}

		bus.start() // takes over the socket path
		second := newFakeSystemd(t, bus.addr, done)
		stopBus(first) // closes every connection to the first bus

		if err := u.Start(ctx, persistenced); err != nil {
			t.Fatalf("start after restart: %v", err)
		}
		second.expect(ctx, t, "StartUnit "+persistenced+" replace")
	})

	t.Run("a wait cut short by a restart is retried on a new connection", func(t *testing.T) {
		bus, first := newTestBus(t)
		stuck := newFakeSystemd(t, bus.addr, map[string]fakeUnit{
			persistenced: {Job: "", LoadState: "loaded", ActiveState: "activating", SubState: "start"},
		})
		u := NewUnits(bus.connector())
		t.Cleanup(u.Close)
		ctx := testContext(t)
		started := make(chan error, 1)
		go func() { started <- u.Start(ctx, persistenced) }()
		stuck.expect(ctx, t, "StartUnit "+persistenced+" replace")

		bus.start()
		second := newFakeSystemd(t, bus.addr, done)
		stopBus(first)

		select {
		case err := <-started:
			if err != nil {
				t.Fatalf("start across restart: %v", err)
			}
		case <-ctx.Done():
			t.Fatal("Start did not return after the bus restarted")
		}
		second.expect(ctx, t, "StartUnit "+persistenced+" replace")
	})

	t.Run("Close drops the connection and the next call opens one", func(t *testing.T) {
		_, fake, u := setup(t, done)
		ctx := testContext(t)
		if err := u.Start(ctx, persistenced); err != nil {
			t.Fatal(err)
		}
		u.Close()
		if err := u.Stop(ctx, persistenced); err != nil {
			t.Fatal(err)
		}
		fake.expect(ctx, t, "StartUnit "+persistenced+" replace")
		fake.expect(ctx, t, "StopUnit "+persistenced+" replace")
	})
}
