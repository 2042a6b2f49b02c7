// SPDX-License-Identifier: GPL-2.0
// Stub nvidia.ko for nvidia-driverd's VM tests: no hardware, one exported
// symbol, the driver's version and one of its parameters, and NVIDIA's
// character major 195 (/dev/nvidiactl, /dev/nvidia0 ...): opening a node
// holds the module, as a CUDA process holds the real one.
#include <linux/module.h>
#include <linux/init.h>
#include <linux/fs.h>

#define NVIDIA_MAJOR 195

static int nvidia_e2e_open(struct inode *inode, struct file *file)
{
	return 0;
}

static const struct file_operations nvidia_fops = {
	.owner = THIS_MODULE,
	.open = nvidia_e2e_open,
};

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
	int err;

	if (e2e_fail_init)
		return -ENODEV;
	err = register_chrdev(NVIDIA_MAJOR, "nvidia-frontend", &nvidia_fops);
	if (err < 0)
		return err;
	pr_info("nvidia e2e stub loaded, NVreg_EnableMSI=%d\n", NVreg_EnableMSI);
	return 0;
}

static void __exit nvidia_e2e_exit(void)
{
	unregister_chrdev(NVIDIA_MAJOR, "nvidia-frontend");
}

module_init(nvidia_e2e_init);
module_exit(nvidia_e2e_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("550.54.14");
MODULE_DESCRIPTION("nvidia-driverd e2e stub for nvidia.ko");
