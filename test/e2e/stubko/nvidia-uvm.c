// SPDX-License-Identifier: GPL-2.0
// Stub nvidia-uvm.ko for nvidia-driverd's VM tests: uses nvidia's exported
// symbol, so it depends on nvidia, and registers the "nvidia-uvm" character
// device with a dynamic major, as the real module does: the daemon reads
// that major from /proc/devices to make /dev/nvidia-uvm{,-tools}.
#include <linux/module.h>
#include <linux/init.h>
#include <linux/fs.h>

int nvidia_e2e_stub_ping(void);

static const struct file_operations uvm_fops = {
	.owner = THIS_MODULE,
};
static int uvm_major;

static int __init stub_init(void)
{
	uvm_major = register_chrdev(0, "nvidia-uvm", &uvm_fops);
	if (uvm_major < 0)
		return uvm_major;
	pr_info("nvidia-uvm e2e stub loaded, major %d (nvidia says %d)\n", uvm_major, nvidia_e2e_stub_ping());
	return 0;
}

static void __exit stub_exit(void)
{
	unregister_chrdev(uvm_major, "nvidia-uvm");
}

module_init(stub_init);
module_exit(stub_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("550.54.14");
MODULE_DESCRIPTION("nvidia-driverd e2e stub for nvidia-uvm.ko");
