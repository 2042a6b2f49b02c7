// SPDX-License-Identifier: GPL-2.0
// Stub nvidia-drm.ko for nvidia-driverd's VM tests: uses nvidia's exported
// symbol, so it depends on nvidia.
#include <linux/module.h>
#include <linux/init.h>

int nvidia_e2e_stub_ping(void);

static int __init stub_init(void)
{
	pr_info("nvidia-drm e2e stub loaded (nvidia says %d)\n", nvidia_e2e_stub_ping());
	return 0;
}

static void __exit stub_exit(void)
{
}

module_init(stub_init);
module_exit(stub_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("550.54.14");
MODULE_DESCRIPTION("nvidia-driverd e2e stub for nvidia-drm.ko");
