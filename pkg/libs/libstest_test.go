package libs_test

import (
	"github.com/nvidia-driverd/nvidia-driverd/pkg/libs"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/libs/libstest"
)

var _ libs.Mounter = libstest.NoMounts{}
