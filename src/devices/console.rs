//! The host side of the serial console, as QEMU's `-nographic` presents it:
//! every key goes to the guest (Ctrl-C included), and Ctrl-A starts an
//! escape sequence for the monitor itself.

/// The escape key, Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// What QEMU prints for Ctrl-A h (the keys btvisor implements).
pub const HELP: &str = "\r\nC-a h    print this help\r\nC-a x    exit emulator\r\nC-a C-a  sends C-a\r\n";

/// What one host input byte does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// Send this byte to the guest.
    Guest(u8),
    /// Swallowed (the escape key itself, or an unknown escape).
    None,
    /// Ctrl-A h: print the key list.
    Help,
    /// Ctrl-A x: end the run.
    Quit,
}

/// The Ctrl-A escape state machine.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    after_escape: bool,
}

impl EscapeFilter {
    pub fn feed(&mut self, b: u8) -> Key {
        if !self.after_escape {
            if b == ESCAPE {
                self.after_escape = true;
                return Key::None;
            }
            return Key::Guest(b);
        }
        self.after_escape = false;
        match b {
            ESCAPE | b'a' => Key::Guest(ESCAPE),
            b'x' | b'X' => Key::Quit,
            b'h' | b'H' | b'?' => Key::Help,
            _ => Key::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut f = EscapeFilter::default();
        let keys: Vec<Key> = b"a\x03\x01x".iter().map(|&b| f.feed(b)).collect();
        assert_eq!(keys, [Key::Guest(b'a'), Key::Guest(3), Key::None, Key::Quit]);
        assert_eq!([f.feed(1), f.feed(1)], [Key::None, Key::Guest(1)]);
        assert_eq!([f.feed(1), f.feed(b'h'), f.feed(b'h')], [Key::None, Key::Help, Key::Guest(b'h')]);
        assert_eq!([f.feed(1), f.feed(b'z')], [Key::None, Key::None]);
    }
}
