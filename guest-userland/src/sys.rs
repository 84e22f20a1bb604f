//! The driver's ioctls. Numbers come from nix's `_IOC` encoding and a test
//! checks them against the ABI crate, which generates the C header.

use xxcapture_abi::{
    ioctl, Abort, Exec, Identity, QueueBuffer, RegisterBuffer, RingSetup, Submit, Subscribe,
};

nix::ioctl_none!(xxcap_nop, ioctl::TYPE, ioctl::NOP_NR);
nix::ioctl_read!(xxcap_get_info, ioctl::TYPE, ioctl::GET_INFO_NR, Identity);
nix::ioctl_readwrite!(xxcap_exec, ioctl::TYPE, ioctl::EXEC_NR, Exec);
nix::ioctl_readwrite!(xxcap_submit, ioctl::TYPE, ioctl::SUBMIT_NR, Submit);
nix::ioctl_readwrite!(
    xxcap_queue_buffer,
    ioctl::TYPE,
    ioctl::QUEUE_BUFFER_NR,
    QueueBuffer
);
nix::ioctl_readwrite!(xxcap_subscribe, ioctl::TYPE, ioctl::SUBSCRIBE_NR, Subscribe);
nix::ioctl_none!(xxcap_flush_buffers, ioctl::TYPE, ioctl::FLUSH_BUFFERS_NR);
nix::ioctl_readwrite!(
    xxcap_register_buffer,
    ioctl::TYPE,
    ioctl::REGISTER_BUFFER_NR,
    RegisterBuffer
);
nix::ioctl_write_ptr!(
    xxcap_unregister_buffer,
    ioctl::TYPE,
    ioctl::UNREGISTER_BUFFER_NR,
    u32
);
nix::ioctl_write_ptr!(xxcap_abort, ioctl::TYPE, ioctl::ABORT_NR, Abort);
nix::ioctl_readwrite!(
    xxcap_ring_setup,
    ioctl::TYPE,
    ioctl::RING_SETUP_NR,
    RingSetup
);
nix::ioctl_none!(xxcap_ring_enter, ioctl::TYPE, ioctl::RING_ENTER_NR);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_abi() {
        assert_eq!(
            nix::request_code_none!(ioctl::TYPE, ioctl::NOP_NR) as u32,
            ioctl::NOP
        );
        assert_eq!(
            nix::request_code_read!(
                ioctl::TYPE,
                ioctl::GET_INFO_NR,
                core::mem::size_of::<Identity>()
            ) as u32,
            ioctl::GET_INFO
        );
        assert_eq!(
            nix::request_code_readwrite!(ioctl::TYPE, ioctl::EXEC_NR, core::mem::size_of::<Exec>())
                as u32,
            ioctl::EXEC
        );
        let rw = |nr, size| nix::request_code_readwrite!(ioctl::TYPE, nr, size) as u32;
        assert_eq!(
            rw(ioctl::SUBMIT_NR, core::mem::size_of::<Submit>()),
            ioctl::SUBMIT
        );
        assert_eq!(
            rw(ioctl::QUEUE_BUFFER_NR, core::mem::size_of::<QueueBuffer>()),
            ioctl::QUEUE_BUFFER
        );
        assert_eq!(
            rw(ioctl::SUBSCRIBE_NR, core::mem::size_of::<Subscribe>()),
            ioctl::SUBSCRIBE
        );
        assert_eq!(
            nix::request_code_none!(ioctl::TYPE, ioctl::FLUSH_BUFFERS_NR) as u32,
            ioctl::FLUSH_BUFFERS
        );
        assert_eq!(
            rw(
                ioctl::REGISTER_BUFFER_NR,
                core::mem::size_of::<RegisterBuffer>()
            ),
            ioctl::REGISTER_BUFFER
        );
        assert_eq!(
            nix::request_code_write!(ioctl::TYPE, ioctl::UNREGISTER_BUFFER_NR, 4) as u32,
            ioctl::UNREGISTER_BUFFER
        );
        assert_eq!(
            nix::request_code_write!(ioctl::TYPE, ioctl::ABORT_NR, core::mem::size_of::<Abort>())
                as u32,
            ioctl::ABORT
        );
        assert_eq!(
            rw(ioctl::RING_SETUP_NR, core::mem::size_of::<RingSetup>()),
            ioctl::RING_SETUP
        );
        assert_eq!(
            nix::request_code_none!(ioctl::TYPE, ioctl::RING_ENTER_NR) as u32,
            ioctl::RING_ENTER
        );
    }
}
