#!/bin/busybox sh
# /init of the inner guest of the QEMU case (mtty.qemu.guest_8250): runs
# under QEMU inside the test VM with an mtty instance assigned through
# vfio-pci. For every serial port the kernel's 8250 driver found on a PCI
# device, it writes a line to the port and reads it back: the mtty port is
# a loopback, so whatever is transmitted is received by the same port.
# Prints one INNER-PORT line per port, the driver's counters, and
# INNER-RESULT pass|fail; the outer case checks those lines.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "INNER-BOOTED $(cut -d' ' -f1 /proc/uptime)s"

ports=""
for t in /sys/class/tty/ttyS*; do
    # PCI ports have a PCI device behind them; ttyS0 is QEMU's ISA console.
    if readlink -f "$t/device" | grep -q '/pci'; then
        ports="$ports ${t##*/}"
    fi
done
echo "INNER-PORTS${ports:- none}"

result=pass
[ -n "$ports" ] || result=fail
for p in $ports; do
    dev=/dev/$p
    # Raw, no echo (an echo would send received bytes out again), no flow
    # control, ignore modem lines; 115200 baud.
    stty -F "$dev" 115200 raw -echo -echoe -echok -echoctl -echoke -crtscts clocal
    msg="vfio-rs:$p:0123456789abcdefghijklmnopqrstuvwxyz"
    # Short (3 bytes, below the 16550A trigger level of 8: only the
    # character timeout reports them) and long (50 bytes, several FIFO fills).
    for data in "<${p#ttyS}>" "$msg"; do
        n=${#data}
        exec 3<>"$dev"
        printf '%s' "$data" >&3
        got=$(timeout 30 head -c "$n" <&3)
        exec 3>&-
        if [ "$got" = "$data" ]; then
            echo "INNER-PORT $p len=$n ok"
        else
            echo "INNER-PORT $p len=$n FAIL got='$got'"
            result=fail
        fi
    done
done
grep -v 'uart:unknown' /proc/tty/driver/serial 2>/dev/null | sed 's/^/INNER-SERIAL /'
grep -i serial /proc/interrupts 2>/dev/null | sed 's/^/INNER-IRQ /'
echo "INNER-RESULT $result"
reboot -f
