package kmod_test

import (
	"github.com/nvidia-driverd/nvidia-driverd/pkg/kmod"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/kmod/kmodtest"
)

var _ kmod.Syscalls = (*kmodtest.Syscalls)(nil)
