#!/bin/sh
# The guest half of `xxvm exec` (the same script in the busybox initramfs
# and in the Debian image). $1 is the run's folder, written by the host:
#   put.list  one "N DEST" line per --put; put/N is the file or folder
#   get.list  one guest path per --get, in order
#   cmd       the command, as a shell script
# Puts the files in place, runs the command with its output on the
# console between the XXCAP-EXEC-BEGIN and XXCAP-EXEC-END lines, then
# writes a tar archive to the output disk (the virtio disk whose serial is
# xxcap-out): xxexec-out/status, xxexec-out/kernel.log and
# xxexec-out/get/N for each --get path that exists.
dir=$1
out=/tmp/xxexec-out
up() {
	cut -d' ' -f1 /proc/uptime
}

disk=
for b in /sys/block/vd*; do
	[ "$(cat "$b/serial" 2>/dev/null)" = xxcap-out ] && disk=/dev/${b##*/}
done
[ -n "$disk" ] || { echo "XXCAP-EXEC-ERROR no output disk (serial xxcap-out)"; exit 1; }

mkdir -p $out/get || exit 1
ok=1
while IFS=' ' read -r n dest; do
	src=$dir/put/$n
	if [ -d "$src" ]; then
		mkdir -p "$dest" && cp -a "$src/." "$dest/"
	else
		mkdir -p "$(dirname "$dest")" && cp -a "$src" "$dest"
	fi || { echo "XXCAP-EXEC-ERROR put $dest failed"; ok=0; }
done <"$dir/put.list"
[ $ok = 1 ] || exit 1

# Kernel messages go to the kernel log only while the command runs, so
# that the console between the markers is the command's output.
echo 1 >/proc/sys/kernel/printk
mkdir -p /root
echo "XXCAP-EXEC-BEGIN uptime=$(up)"
(cd /root && HOME=/root exec sh "$dir/cmd" </dev/null 2>&1)
rc=$?
echo "XXCAP-EXEC-END rc=$rc uptime=$(up)"

n=0
while IFS= read -r path; do
	if [ -e "$path" ] || [ -L "$path" ]; then
		cp -a "$path" "$out/get/$n" || echo "XXCAP-EXEC-ERROR get $path: copy failed"
	fi
	n=$((n + 1))
done <"$dir/get.list"
dmesg >$out/kernel.log
echo $rc >$out/status
tar cf "$disk" -C /tmp xxexec-out || { echo "XXCAP-EXEC-ERROR writing $disk failed"; exit 1; }
sync
echo "XXCAP-EXEC-SAVED uptime=$(up)"
