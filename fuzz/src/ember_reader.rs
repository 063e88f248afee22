//! Any bytes through the `.ember` reader. Parses (aligned, and misaligned by one byte), then, for
//! accepted files, reads the metadata conventions and every element of every tensor view. The
//! reader must return errors, never panic, whatever the input.

use emberlm_formats::ember::{AlignedBytes, EmberFile, TensorData, parse_header};
use emberlm_formats::meta;
use emberlm_formats::quant::dequantize_q8;

/// The target's body.
pub fn run(data: &[u8]) {
    let aligned = AlignedBytes::copy_from(data);
    let Ok(file) = EmberFile::parse(&aligned) else {
        return;
    };
    // Header validation does not depend on the buffer's address. (Compared through Debug, which
    // prints every NaN alike: a NaN in the metadata is not equal to itself.)
    let mut shifted = vec![0u8];
    shifted.extend_from_slice(data);
    let shifted = AlignedBytes::copy_from(&shifted);
    let again = parse_header(&shifted[1..]).expect("the same bytes, one byte further");
    assert_eq!(format!("{again:?}"), format!("{:?}", file.header));

    let h = &file.header;
    let _ = meta::get_config(h);
    let _ = meta::get_task(h);
    let _ = meta::get_prompt(h);
    let _ = meta::get_tokenizer(h);
    for (k, _) in &h.metadata {
        let _ = h.require_u64(k);
        let _ = h.require_count(k, 1 << 20);
    }
    let mut sum = 0f32;
    for t in &h.tensors {
        assert_eq!(file.raw(t).len() as u64, t.size);
        match file.data(t).expect("a parsed file's tensors are viewable") {
            TensorData::F32(v) => sum += v.iter().sum::<f32>(),
            TensorData::F16(v) => sum += v.iter().map(|x| x.to_f32()).sum::<f32>(),
            TensorData::Q8 { quants, scales } => {
                let cols = t.shape.last().map_or(1, |&c| c as usize);
                let mut out = vec![0f32; quants.len()];
                dequantize_q8(quants, scales, cols, &mut out)
                    .expect("a parsed Q8 tensor has consistent quants and scales");
                sum += out.iter().sum::<f32>();
            }
            TensorData::Q4 { quants, scales } => {
                let cols = t.shape.last().map_or(1, |&c| c as usize);
                let mut out = vec![0f32; t.numel() as usize];
                emberlm_formats::quant::dequantize_q4(quants, scales, cols, &mut out)
                    .expect("a parsed Q4 tensor has consistent nibbles and scales");
                sum += out.iter().sum::<f32>();
            }
            TensorData::Q6 { quants, scales } => {
                let cols = t.shape.last().map_or(1, |&c| c as usize);
                let mut out = vec![0f32; t.numel() as usize];
                emberlm_formats::quant::dequantize_q6(quants, scales, cols, &mut out)
                    .expect("a parsed Q6 tensor has consistent blocks and scales");
                sum += out.iter().sum::<f32>();
            }
        }
    }
    std::hint::black_box(sum);
}
