#!/bin/busybox sh
# /init of the inner guests of the QEMU cases: runs under QEMU inside the
# test VM. The kernel command line's `vfio_rs.case=` picks what it does:
#   serial  (mtty.qemu.guest_8250) an mtty instance is assigned through
#           vfio-pci: for every serial port the kernel's 8250 driver found on
#           a PCI device, write a line to it and read it back (the mtty port
#           is a loopback).
#   nic     (qemu.vfio_pci_nic) the test VM's e1000e is assigned: bring the
#           link up, send frames, report the TX counters, interrupts and any
#           transmit hang.
#   stream  (qemu.migrate_mtty) an mtty instance is assigned: stream
#           numbered lines through the first PCI port's loopback and check
#           every byte, while the device's DMA engine copies pages
#           (vfio-guest inner-dma) and the outer case migrates the guest.
# Every line the outer case reads starts with INNER-; the last one is
# INNER-RESULT pass|fail.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "INNER-BOOTED $(cut -d' ' -f1 /proc/uptime)s"

case_name=serial
stream_lines=100
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    vfio_rs.case=*) case_name=${arg#vfio_rs.case=} ;;
    vfio_rs.lines=*) stream_lines=${arg#vfio_rs.lines=} ;;
    esac
done

# The serial ports that sit on a PCI device (ttyS0 is QEMU's ISA console).
pci_ports() {
    for t in /sys/class/tty/ttyS*; do
        if readlink -f "$t/device" | grep -q '/pci'; then
            echo "${t##*/}"
        fi
    done
}

# The sysfs directory of the PCI function behind port $1 (the tty's device
# is the serial core's port device, some levels below it).
pci_function() {
    d=$(readlink -f "/sys/class/tty/$1/device")
    while [ ! -e "$d/resource0" ] && [ "$d" != /sys ]; do
        d=${d%/*}
    done
    echo "$d"
}

# Raw, no echo (an echo would send received bytes out again), no flow
# control, ignore modem lines; 115200 baud.
raw_port() {
    stty -F "/dev/$1" 115200 raw -echo -echoe -echok -echoctl -echoke -crtscts clocal
}

# Writes $2 to port $1 and reads as many bytes back; prints what came back.
# A line comes back within a second or two even under nested TCG; the wait
# only runs out where bytes are lost (the C sample).
loopback() {
    exec 3<>"/dev/$1"
    printf '%s' "$2" >&3
    timeout 10 head -c "${#2}" <&3
    exec 3>&-
}

# The 16550 registers that reading does not change (IER, LCR, MCR, SCR) of
# the UART behind ttyS$1's PCI function, BAR0 (I/O ports), through sysfs.
uart_regs() {
    res="$(pci_function "$1")/resource0"
    out=""
    for r in 1:ier 3:lcr 4:mcr 7:scr; do
        v=$(dd if="$res" bs=1 count=1 skip="${r%%:*}" 2>/tmp/dd.err | od -An -tx1 | tr -d ' ')
        [ -n "$v" ] || v="?($res: $(tr '\n' ' ' </tmp/dd.err))"
        out="$out ${r#*:}=$v"
    done
    echo "$out"
}

case_serial() {
    ports=$(pci_ports)
    echo "INNER-PORTS ${ports:-none}"
    result=pass
    [ -n "$ports" ] || result=fail
    for p in $ports; do
        raw_port "$p"
        # Short (3 bytes, below the 16550A trigger level of 8: only the
        # character timeout reports them) and long (50 bytes, several FIFO
        # fills).
        for data in "<${p#ttyS}>" "vfio-rs:$p:0123456789abcdefghijklmnopqrstuvwxyz"; do
            got=$(loopback "$p" "$data")
            if [ "$got" = "$data" ]; then
                echo "INNER-PORT $p len=${#data} ok"
            else
                echo "INNER-PORT $p len=${#data} FAIL got='$got'"
                result=fail
            fi
        done
    done
    grep -v 'uart:unknown' /proc/tty/driver/serial 2>/dev/null | sed 's/^/INNER-SERIAL /'
    grep -i serial /proc/interrupts 2>/dev/null | sed 's/^/INNER-IRQ /'
    echo "INNER-RESULT $result"
}

# Frames go to a neighbour entered by hand (no ARP: every frame sent is one
# ICMP echo request, and no reply comes back).
FRAMES=16
case_nic() {
    result=pass
    dev=""
    for n in /sys/class/net/*; do
        [ -e "$n/device" ] && dev=${n##*/}
    done
    echo "INNER-NIC ${dev:-none} driver=$(basename "$(readlink -f /sys/class/net/$dev/device/driver)" 2>/dev/null)"
    [ -n "$dev" ] || { echo "INNER-RESULT fail"; return; }
    ip link set "$dev" up
    ip addr add 10.99.0.1/24 dev "$dev"
    ip neigh add 10.99.0.2 lladdr 52:54:00:99:00:02 dev "$dev" nud permanent
    i=0
    while [ "$(cat /sys/class/net/$dev/carrier 2>/dev/null)" != 1 ] && [ $i -lt 120 ]; do
        sleep 0.5
        i=$((i + 1))
    done
    echo "INNER-LINK carrier=$(cat /sys/class/net/$dev/carrier 2>/dev/null) operstate=$(cat /sys/class/net/$dev/operstate)"
    stats=/sys/class/net/$dev/statistics
    before=$(cat $stats/tx_packets)
    # -W: how long ping waits without any reply before it gives up (none
    # comes back here); long enough for all FRAMES to go out first.
    ping -c $FRAMES -i 0.2 -W 10 10.99.0.2 2>&1 | tail -n 2 | sed 's/^/INNER-PING /'
    # The counter is the NIC's own (read from its statistics registers), so
    # it counts frames the device fetched by DMA and sent; give the last
    # ones a moment.
    i=0
    while [ "$(cat $stats/tx_packets)" -lt $((before + FRAMES)) ] && [ $i -lt 10 ]; do
        sleep 0.5
        i=$((i + 1))
    done
    after=$(cat $stats/tx_packets)
    echo "INNER-TX sent=$FRAMES before=$before after=$after errors=$(cat $stats/tx_errors) dropped=$(cat $stats/tx_dropped)"
    # The device counted frames it sent (see docs/testing.md for why not
    # all FRAMES), without errors; a transmit hang or timeout shows below.
    [ "$after" -gt "$before" ] || result=fail
    [ "$(cat $stats/tx_errors)" = 0 ] || result=fail
    grep -E "$dev|PCI-MSI" /proc/interrupts | sed 's/^/INNER-IRQ /'
    if dmesg | grep -E -i "hang|timeout|watchdog" | grep -q .; then
        result=fail
    fi
    [ $result = pass ] || dmesg | tail -n 15 | sed 's/^/INNER-DMESG /'
    echo "INNER-RESULT $result"
}

# Each line carries its number, so a lost, repeated or reordered byte shows
# as a mismatch in the line it hit (and the lines after it). The outer case
# sets how many lines (`vfio_rs.lines=`) to outlast the migration.
case_stream() {
    port=$(pci_ports | head -n 1)
    [ -n "$port" ] || { echo "INNER-RESULT fail"; return; }
    raw_port "$port"
    # A scratch value the migration must carry over.
    res="$(pci_function "$port")/resource0"
    printf '\245' | dd of="$res" bs=1 count=1 seek=7 conv=notrunc 2>/dev/null
    # Keep the port open throughout, so the driver's register state (IER
    # with the port up) is the same before and after.
    exec 4<>"/dev/$port"
    echo "INNER-REGS before$(uart_regs "$port")"
    result=pass
    # Meanwhile the device's DMA engine copies pages the CPU never writes
    # (vfio-guest inner-dma; our mtty's BAR2, which the C sample lacks).
    dma_pid=""
    if [ -e "$(pci_function "$port")/resource2" ]; then
        /bin/vfio-guest inner-dma --pages 4 --stop /tmp/dma.stop &
        dma_pid=$!
    else
        echo "INNER-DMA none (no BAR2)"
    fi
    i=1
    while [ $i -le "$stream_lines" ]; do
        data="<$i:abcdefghijklmnopqrstuvwxyz0123456789:$i>"
        got=$(loopback "$port" "$data")
        if [ "$got" != "$data" ]; then
            echo "INNER-STREAM $i FAIL got='$got'"
            result=fail
            break
        fi
        [ $((i % 10)) -eq 0 ] && echo "INNER-STREAM $i ok $(cut -d' ' -f1 /proc/uptime)s"
        i=$((i + 1))
    done
    echo "INNER-REGS after$(uart_regs "$port")"
    exec 4>&-
    if [ -n "$dma_pid" ]; then
        touch /tmp/dma.stop
        wait "$dma_pid" || result=fail
    fi
    echo "INNER-RESULT $result"
}

case "$case_name" in
serial) case_serial ;;
nic) case_nic ;;
stream) case_stream ;;
*) echo "INNER-RESULT fail (unknown case $case_name)" ;;
esac
reboot -f
