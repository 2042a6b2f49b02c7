// SPDX-License-Identifier: GPL-2.0
// Stub nvidia.ko for nvidia-driverd's VM tests: no hardware, one exported
// symbol, the driver's version and one of its parameters.
#include <linux/module.h>
#include <linux/init.h>

static int NVreg_EnableMSI = -1;
static int e2e_fail_init;
module_param(e2e_fail_init, int, 0444);
MODULE_PARM_DESC(e2e_fail_init, "stub: make init fail with -ENODEV, as a driver that cannot probe");
module_param(NVreg_EnableMSI, int, 0444);
MODULE_PARM_DESC(NVreg_EnableMSI, "stub: recorded, not used");

int nvidia_e2e_stub_ping(void)
{
	return NVreg_EnableMSI;
}
EXPORT_SYMBOL(nvidia_e2e_stub_ping);

static int __init nvidia_e2e_init(void)
{
	if (e2e_fail_init)
		return -ENODEV;
	pr_info("nvidia e2e stub loaded, NVreg_EnableMSI=%d\n", NVreg_EnableMSI);
	return 0;
}

static void __exit nvidia_e2e_exit(void)
{
}

module_init(nvidia_e2e_init);
module_exit(nvidia_e2e_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("550.54.14");
MODULE_DESCRIPTION("nvidia-driverd e2e stub for nvidia.ko");
