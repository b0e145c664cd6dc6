#!/bin/busybox sh
# /init of the emulated KVM host (L1), written by tests/src/kvm_host. It loads KVM, runs the
# job's /job/run.sh with its output on the second serial port (ttyS1), reports on the console
# (ttyS0) with TWINBOX-L1-* markers that the harness parses, and powers L1 off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "TWINBOX-L1-UP uptime=$(cut -d' ' -f1 /proc/uptime)"
# A heartbeat on the console: the harness takes its silence for a frozen L1.
(while :; do sleep 5; echo "TWINBOX-L1-ALIVE"; done) &
for module in /lib/twinbox-l1/*.ko; do
	insmod "$module" || echo "TWINBOX-L1-MODULE-FAILED $module"
done
if [ ! -c /dev/kvm ]; then
	echo "TWINBOX-L1-NO-KVM"
	dmesg | grep -i -e kvm -e svm | tail -n 5
	poweroff -f
fi
. /job/params
stty -F /dev/ttyS1 raw -echo
cd /job
sh /job/run.sh </dev/null >/dev/ttyS1 2>&1 &
job=$!
(
	sleep "$TWINBOX_TIMEOUT_SECS"
	echo "TWINBOX-L1-TIMEOUT"
	kill -KILL "$job"
) &
watchdog=$!
wait "$job"
status=$?
kill "$watchdog" 2>/dev/null
# L2 writes to the job's disks may still sit in L1's page cache.
sync
echo "TWINBOX-L1-EXIT $status"
poweroff -f
