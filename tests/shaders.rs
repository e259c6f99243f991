//! Every shader parses and validates with naga, without a GPU, so a WGSL mistake fails
//! `cargo test` on any machine.

use contextual_attention::gpu::SHADERS;

#[test]
fn every_shader_validates_with_naga() {
    for (name, src) in SHADERS {
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        assert!(
            module.entry_points.iter().all(|e| e.stage == naga::ShaderStage::Compute),
            "{name}: only compute entry points"
        );
        assert!(!module.entry_points.is_empty(), "{name}: no entry point");
    }
}
