//! The host's kernel table against the shaders themselves, with naga and without a GPU: every
//! shader parses and validates; for every kernel the uniform struct at binding 0 has the host
//! struct's size, the storage bindings the entry point uses are exactly the ones the host binds
//! (numbers and read / read-write), `@workgroup_size` is what the host dispatches with, and the
//! override constants the host sets exist. And the layout rule: each shader has a GPU stage
//! module and a twin of the same name.

use std::collections::BTreeMap;
use std::path::Path;

use contextual_attention::gpu::{Access, KernelInfo, KERNELS};
use naga::{AddressSpace, StorageAccess};

/// A shader's module and its validation info, or the error text.
fn compile(info: &KernelInfo) -> (naga::Module, naga::valid::ModuleInfo) {
    let src = info.full_source();
    let module =
        naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{}: {}", info.file, e.emit_to_string(&src)));
    let valid = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", info.file, e.emit_to_string(&src)));
    (module, valid)
}

/// What a kernel's entry point binds, as the shader says: binding → (uniform size or storage access).
#[derive(Debug, PartialEq)]
enum Bound {
    Uniform(u32),
    Storage(Access),
}

fn shader_bindings(module: &naga::Module, valid: &naga::valid::ModuleInfo, entry: usize) -> BTreeMap<u32, Bound> {
    let uses = valid.get_entry_point(entry);
    let mut bound = BTreeMap::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else { continue };
        assert_eq!(binding.group, 0, "{:?}: every binding is in group 0", var.name);
        if uses[handle].is_empty() {
            continue;
        }
        let what = match var.space {
            AddressSpace::Uniform => Bound::Uniform(module.types[var.ty].inner.size(module.to_ctx())),
            AddressSpace::Storage { access } if access.contains(StorageAccess::STORE) => {
                Bound::Storage(Access::ReadWrite)
            }
            AddressSpace::Storage { .. } => Bound::Storage(Access::Read),
            other => panic!("{:?}: unexpected address space {other:?}", var.name),
        };
        bound.insert(binding.binding, what);
    }
    bound
}

fn host_bindings(info: &KernelInfo) -> BTreeMap<u32, Bound> {
    let mut bound = BTreeMap::from([(0, Bound::Uniform(info.params_size as u32))]);
    for (k, access) in info.storage.iter().enumerate() {
        bound.insert(k as u32 + 1, Bound::Storage(*access));
    }
    bound
}

#[test]
fn every_shader_validates_with_naga() {
    for info in KERNELS {
        let (module, _) = compile(info);
        assert!(
            module.entry_points.iter().all(|e| e.stage == naga::ShaderStage::Compute),
            "{}: only compute entry points",
            info.file
        );
        assert!(!module.entry_points.is_empty(), "{}: no entry point", info.file);
    }
}

#[test]
fn host_tables_match_the_shaders() {
    let mut failures = Vec::new();
    for info in KERNELS {
        let (module, valid) = compile(info);
        let Some(entry) = module.entry_points.iter().position(|e| e.name == "main") else {
            failures.push(format!("{}: no entry point `main`", info.file));
            continue;
        };
        let (shader, host) = (shader_bindings(&module, &valid, entry), host_bindings(info));
        if shader != host {
            failures.push(format!("{} ({}): the shader binds {shader:?}, the host {host:?}", info.name, info.file));
        }
        let size = module.entry_points[entry].workgroup_size;
        if size != info.workgroup_size {
            failures.push(format!(
                "{}: @workgroup_size {size:?} in the shader, {:?} on the host",
                info.name, info.workgroup_size
            ));
        }
        for (name, _) in info.constants {
            if !module.overrides.iter().any(|(_, o)| o.name.as_deref() == Some(*name)) {
                failures.push(format!("{}: the host sets override `{name}`, which the shader lacks", info.name));
            }
        }
    }
    assert!(failures.is_empty(), "host and shaders disagree:\n{}", failures.join("\n"));
}

#[test]
fn every_shader_has_a_stage_module_and_a_twin_of_its_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(root.join("shaders"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wgsl") && n != "common.wgsl")
        .collect();
    names.sort();
    assert!(names.len() >= 10, "shaders found: {names:?}");
    for file in &names {
        let stem = file.trim_end_matches(".wgsl");
        for dir in ["src/gpu/stages", "src/reference"] {
            assert!(root.join(dir).join(format!("{stem}.rs")).is_file(), "{file} has no {dir}/{stem}.rs");
        }
        assert!(KERNELS.iter().any(|k| k.file == file), "{file} is in no kernel of the table");
    }
    for info in KERNELS {
        assert!(names.iter().any(|n| n == info.file), "kernel {} names a missing shader {}", info.name, info.file);
    }
}
