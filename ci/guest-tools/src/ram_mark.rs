//! `xxcap-test ram-mark`: card RAM keeps its contents across guest reboots
//! and frontend reconnections (SPEC §9). Each run reads the mark the last
//! run left in the last page of card RAM, prints its generation ("none"
//! when there is none), and leaves the next one; the host checks the
//! generations follow each other across boots and QEMU runs.

use std::process::ExitCode;

use xxcapture::{Access, Card, Error};

const MAGIC: &[u8; 16] = b"XXCAP-RAM-KEPT\0\0";
const PAGE: usize = 4096;

pub fn run(device: &str) -> Result<ExitCode, Error> {
    let card = Card::open(device, Access::Control)?;
    let mut ram = card.map_card_ram()?;
    let len = ram.len();
    if len < PAGE {
        return Err(Error::Protocol);
    }
    let page = &mut ram.as_mut_slice()[len - PAGE..];
    let found = if &page[..16] == MAGIC {
        let gen = u64::from_le_bytes(page[16..24].try_into().map_err(|_| Error::Protocol)?);
        // The rest of the page is the generation's pattern: all of it kept.
        let intact = page[24..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(gen, i));
        if !intact {
            println!("ram-mark: generation {gen} found, its page damaged");
            return Ok(ExitCode::FAILURE);
        }
        Some(gen)
    } else {
        None
    };
    let next = found.map_or(1, |g| g + 1);
    page[..16].copy_from_slice(MAGIC);
    page[16..24].copy_from_slice(&next.to_le_bytes());
    for (i, b) in page[24..].iter_mut().enumerate() {
        *b = pattern(next, i);
    }
    println!(
        "ram-mark: found {}, left {next}",
        found.map_or("none".to_string(), |g| g.to_string())
    );
    Ok(ExitCode::SUCCESS)
}

fn pattern(generation: u64, i: usize) -> u8 {
    (generation as usize)
        .wrapping_mul(131)
        .wrapping_add(i.wrapping_mul(7)) as u8
}
