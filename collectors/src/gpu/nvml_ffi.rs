//! NVLink counters through NVML field values: the one NVML call this agent
//! makes below `nvml-wrapper`'s safe API, hence this module's `unsafe`.
//!
//! NVML's NVLink throughput fields (`NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX`
//! and `_TX`, running totals in KiB) are per link: the link goes in the
//! `scopeId` of each `nvmlFieldValue_t`. `Device::field_values_for` always
//! leaves `scopeId` at 0, so it would read link 0 only; here the request is
//! built with one entry per link and direction and summed. Field IDs 138 and
//! 139 lie outside the range NVIDIA renumbered in driver 580.82, so no
//! translation is needed.

#![allow(unsafe_code)]

use std::os::raw::c_int;

use nvml_wrapper::Device;
use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::SampleValue;
use nvml_wrapper::error::{NvmlError, nvml_try};
use nvml_wrapper::struct_wrappers::device::FieldValueSample;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper_sys::bindings::field_id::{
    NVML_FI_DEV_NVLINK_LINK_COUNT, NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX, NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
};
use nvml_wrapper_sys::bindings::nvmlFieldValue_t;

/// The request buffer, kept for its capacity.
#[derive(Default)]
pub struct NvlinkScratch {
    values: Vec<nvmlFieldValue_t>,
}

fn as_u64(value: SampleValue) -> Option<u64> {
    match value {
        SampleValue::U64(value) => Some(value),
        SampleValue::U32(value) => Some(u64::from(value)),
        SampleValue::I64(value) => u64::try_from(value).ok(),
        SampleValue::F64(_) => None,
    }
}

/// How many NVLink links the GPU has (0 without NVLink).
pub fn nvlink_link_count(device: &Device<'_>) -> Result<u32, NvmlError> {
    let mut samples = device.field_values_for(&[FieldId(NVML_FI_DEV_NVLINK_LINK_COUNT)])?;
    let sample = samples.pop().ok_or(NvmlError::NotSupported)??;
    let links = sample.value.map(as_u64)?.ok_or(NvmlError::NotSupported)?;
    Ok(u32::try_from(links).unwrap_or(0))
}

/// NVLink data received and sent in KiB since the driver loaded, summed over
/// `links`. Links that report an error (inactive ones) are left out; an error
/// on every link is returned.
pub fn nvlink_data_kib(
    nvml: &Nvml,
    device: &Device<'_>,
    links: u32,
    scratch: &mut NvlinkScratch,
) -> Result<(u64, u64), NvmlError> {
    let values = &mut scratch.values;
    values.clear();
    for link in 0..links {
        for field in [
            NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
            NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
        ] {
            // SAFETY: nvmlFieldValue_t is plain C data (integers and a union
            // of numbers), for which all-zero bytes are a valid value; NVML's
            // own examples zero it before filling fieldId and scopeId.
            let mut value: nvmlFieldValue_t = unsafe { std::mem::zeroed() };
            value.fieldId = field;
            value.scopeId = link;
            values.push(value);
        }
    }
    let count = c_int::try_from(values.len()).map_err(|_| NvmlError::InvalidArg)?;
    // The symbol may be missing from an old driver: an error, not a panic
    // (NvmlLib's own method would panic).
    let get_field_values = nvml
        .lib()
        .nvmlDeviceGetFieldValues
        .as_ref()
        .map_err(|error| NvmlError::FailedToLoadSymbol(error.to_string()))?;
    // SAFETY: `device` borrows `nvml`, so the library is loaded, NVML is
    // initialised and the handle is one NVML gave out. `values` holds `count`
    // initialised entries; NVML writes each in place during the call and
    // keeps no pointer to them afterwards.
    let status = unsafe { get_field_values(device.handle(), count, values.as_mut_ptr()) };
    nvml_try(status)?;

    let (mut rx, mut tx) = (0u64, 0u64);
    let mut first_error = None;
    let mut answered = false;
    for value in values.iter() {
        let field = value.fieldId;
        match FieldValueSample::try_from(*value).and_then(|sample| sample.value) {
            Ok(sample) => {
                let kib = as_u64(sample).ok_or(NvmlError::UnexpectedVariant(field))?;
                let total = if field == NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX {
                    &mut rx
                } else {
                    &mut tx
                };
                *total = total.saturating_add(kib);
                answered = true;
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) if !answered => Err(error),
        _ => Ok((rx, tx)),
    }
}
