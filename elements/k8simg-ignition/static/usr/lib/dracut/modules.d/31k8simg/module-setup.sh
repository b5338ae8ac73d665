#!/bin/bash
# k8simg's fixes for Debian's 30ignition module under dracut 059.
# A dracut module, not a diskimage-builder phase script:
# dib-lint: disable=setu sete setpipefail dibdebugtrace

check() {
    return 0
}

depends() {
    echo ignition systemd-networkd
}

install() {
    # 30ignition links its units with ln_r "../unit", which dracut 059 resolves against the
    # initramfs root and leaves dangling: no Ignition stage would ever run. Link them again.
    local dir unit
    for dir in "$initdir$systemdsystemunitdir"/ignition-*.target.requires; do
        [ -d "$dir" ] || continue
        for unit in "$dir"/*; do
            ln -sfn "../$(basename "$unit")" "$unit"
        done
    done
    # Debian's Ignition relabels the files it writes with setfiles; the image runs without
    # SELinux, so relabelling is a no-op.
    inst_script "$moddir/setfiles" /usr/sbin/setfiles
    # ignition-fetch waits for a config source forever; give it a deadline so a node without
    # a config drive fails visibly on its console.
    inst_simple "$moddir/ignition-fetch-timeout.conf" \
        "$systemdsystemunitdir/ignition-fetch.service.d/10-k8simg-timeout.conf"
    # No systemd-sysusers in the initramfs: it created Debian's whole base set of users and
    # groups there at every first boot (1.7 s of its start under emulation), when all the
    # initramfs needs are the users and groups dracut's modules copy in from the image (its
    # udev rules' groups, networkd's and dbus's users). Masked: networkd's module needs the
    # sysusers module in, and the image's /etc is stamped up to date for the real root.
    mkdir -p "$initdir/etc/systemd/system"
    ln -sfn /dev/null "$initdir/etc/systemd/system/systemd-sysusers.service"
    # Network for a config's remote resources, only when Ignition says it needs one.
    inst_simple "$moddir/k8simg-ignition-neednet.service" \
        "$systemdsystemunitdir/k8simg-ignition-neednet.service"
    mkdir -p "$initdir$systemdsystemunitdir/ignition-complete.target.requires"
    ln -sfn ../k8simg-ignition-neednet.service \
        "$initdir$systemdsystemunitdir/ignition-complete.target.requires/k8simg-ignition-neednet.service"
    inst_simple "$moddir/10-k8simg-initrd.network" /etc/systemd/network/10-k8simg-initrd.network
    inst_multiple systemctl systemd-machine-id-setup awk cat chmod mv
    # Ignition's presets applied here, with the machine id: no first-boot preset-all later.
    inst_script "$moddir/k8simg-ignition-presets" /usr/bin/k8simg-ignition-presets
    inst_simple "$moddir/k8simg-ignition-presets.service" \
        "$systemdsystemunitdir/k8simg-ignition-presets.service"
    ln -sfn ../k8simg-ignition-presets.service \
        "$initdir$systemdsystemunitdir/ignition-complete.target.requires/k8simg-ignition-presets.service"
    # A failed first boot prints Ignition's messages on the console before the emergency
    # shell starts.
    inst_multiple -o journalctl sed tail  # (awk: above)
    inst_script "$moddir/k8simg-ignition-report" /usr/bin/k8simg-ignition-report
    local shell
    for shell in emergency.service dracut-emergency.service; do
        inst_simple "$moddir/k8simg-ignition-report.conf" \
            "$systemdsystemunitdir/$shell.d/10-k8simg-ignition-report.conf"
    done
}
