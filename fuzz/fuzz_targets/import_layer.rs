//! Feed arbitrary bytes to the layer importer: it must return Ok or an error, never panic, never write
//! outside the destination, and a successful import must re-export to the same diff_id.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use ovlcore_core::{import_layer, ImportOptions, LayerTar, Privilege};

fuzz_target!(|data: &[u8]| {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("layer");
    std::fs::create_dir(&dest).unwrap();
    let split_path = t.path().join("split");
    let split = std::fs::File::create(&split_path).unwrap();
    let opts = ImportOptions { privilege: Privilege::Rootless, max_size: Some(64 << 20), ..ImportOptions::default() };
    if let Ok(report) = import_layer(data, &dest, Some(split), opts) {
        let mut out = Vec::new();
        let mut tar = LayerTar::from_split(&dest, std::fs::File::open(&split_path).unwrap()).unwrap();
        tar.read_to_end(&mut out).expect("re-export of an imported layer");
        assert_eq!(tar.digest(), report.diff_id, "re-export must reproduce the diff_id");
    }
    // Nothing may appear next to the layer directory.
    let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "import wrote outside its directory: {names:?}");
});
