//! The image commands: thin wrappers that turn CLI structs into `crate::image` calls and
//! print results. `inspect` shows containers too (containers first, as docker).

use std::path::PathBuf;

use crate::cli::GlobalOpts;
use crate::cli::image::{BundleArgs, Format, ImageCommand, ImagesArgs, InspectType, SpecArgs};
use crate::config::Config;
use crate::engine::EngineError;
use crate::image::store::DEFAULT_ROOT;
use crate::image::{Image, ImageStore, Platform, PullOptions, archive};
use crate::spec::{self, SpecError, SpecOptions};

/// Environment variable overriding the store root.
pub const ROOT_ENV: &str = "TWINBOX_ROOT";

/// The store root: `--root`, else `$TWINBOX_ROOT`, else /var/lib/twinbox.
pub fn store_root(global: &GlobalOpts) -> PathBuf {
    global
        .root
        .clone()
        .or_else(|| std::env::var_os(ROOT_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

type CommandResult = Result<(), Box<dyn std::error::Error>>;

/// Runs an image command; returns the exit code.
pub fn run(global: &GlobalOpts, command: ImageCommand) -> i32 {
    match execute(global, command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("twinbox: {e}");
            1
        }
    }
}

fn execute(global: &GlobalOpts, command: ImageCommand) -> CommandResult {
    let store = ImageStore::open(&store_root(global))?;
    match command {
        ImageCommand::Pull(args) => {
            let mut insecure_registries = Config::load()?.insecure_registries;
            insecure_registries.extend(args.insecure_registries);
            let options = PullOptions {
                platform: args
                    .platform
                    .as_deref()
                    .map(str::parse::<Platform>)
                    .transpose()?,
                insecure_registries,
                authfile: args.authfile,
                progress: !args.quiet,
            };
            let image = crate::image::pull(&store, &args.reference, &options)?;
            if args.quiet {
                println!("{}", image.id);
            } else {
                println!("Pulled {} ({})", args.reference, image.id);
            }
        }
        ImageCommand::Load(args) => {
            let path = args.path.or(args.input).expect("clap requires one");
            let platform = args
                .platform
                .as_deref()
                .map(str::parse::<Platform>)
                .transpose()?;
            for image in archive::load(&store, &path, args.name.as_deref(), platform.as_ref())? {
                if image.names.is_empty() {
                    println!("Loaded image: {}", image.id);
                }
                for name in &image.names {
                    println!("Loaded image: {name}");
                }
            }
        }
        ImageCommand::Save(args) => match &args.output {
            Some(path) => crate::image::save::save_to_file(&store, &args.images, path)?,
            None => {
                use std::io::IsTerminal;
                if std::io::stdout().is_terminal() {
                    return Err("refusing to write an image archive to a terminal; give -o \
                                FILE or redirect stdout"
                        .into());
                }
                crate::image::save::save(&store, &args.images, std::io::stdout().lock())?;
            }
        },
        ImageCommand::Import(args) => {
            let image = archive::import(&store, &args.tarball, &args.name, &args.changes)?;
            println!("{}", image.id);
        }
        ImageCommand::Images(args) => list_images(&store, &args)?,
        ImageCommand::Inspect(args) => {
            let engine = super::engine::engine_for(global);
            let mut out = Vec::new();
            for name in &args.images {
                if args.kind != Some(InspectType::Image) {
                    match engine.inspect(name) {
                        Ok(container) => {
                            out.push(container);
                            continue;
                        }
                        Err(EngineError::NoSuchContainer(_)) if args.kind.is_none() => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                out.push(inspect(&store, &store.resolve(name)?)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Rmi(args) => {
            // Like docker: remove what can be removed, report each failure, fail at the end.
            let mut errors = Vec::new();
            for spec in &args.images {
                match store.remove_image(spec, args.force) {
                    Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
                    Err(e) => errors.push(e),
                }
            }
            if let Some(last) = errors.pop() {
                errors.iter().for_each(|e| eprintln!("twinbox: {e}"));
                return Err(last.into());
            }
        }
        ImageCommand::Gc => {
            let stats = store.gc()?;
            println!(
                "Deleted {} blobs ({}) and {} unpacked layers",
                stats.blobs,
                human_size(stats.bytes),
                stats.layers
            );
        }
        ImageCommand::Bundle(args) => bundle(&store, args)?,
    }
    Ok(())
}

fn bundle(store: &ImageStore, args: BundleArgs) -> CommandResult {
    let image = store.resolve(&args.image)?;
    let mut options = spec_options(&args.spec)?;
    options.command = args.command;
    spec::write_bundle(store, &image, &args.dir, &options)?;
    println!("{}", args.dir.display());
    Ok(())
}

/// Turns the shared spec flags into [`SpecOptions`].
pub fn spec_options(args: &SpecArgs) -> Result<SpecOptions, SpecError> {
    let mut seccomp_unconfined = false;
    let mut seccomp_profile = None;
    let mut no_new_privileges = None;
    for opt in &args.security_opt {
        let (key, value) = opt
            .split_once(['=', ':'])
            .map_or((opt.as_str(), None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("seccomp", Some("unconfined")) => seccomp_unconfined = true,
            ("seccomp", Some(path)) if !path.is_empty() => {
                seccomp_profile = Some(PathBuf::from(path));
            }
            ("no-new-privileges", None | Some("true")) => no_new_privileges = Some(true),
            ("no-new-privileges", Some("false")) => no_new_privileges = Some(false),
            // Neither SELinux nor AppArmor is applied: asking for none of them is fine.
            ("label", Some("disable")) | ("apparmor", Some("unconfined")) => {}
            _ => {
                return Err(SpecError::Invalid {
                    what: "--security-opt",
                    value: opt.clone(),
                    reason: "supported: seccomp=unconfined, seccomp=PROFILE.json, \
                             no-new-privileges[=true|false]",
                });
            }
        }
    }
    let entrypoint = args.entrypoint.as_ref().map(|e| {
        if e.is_empty() {
            Vec::new()
        } else {
            vec![e.clone()]
        }
    });
    Ok(SpecOptions {
        command: Vec::new(),
        entrypoint,
        env: args.env.clone(),
        user: args.user.clone(),
        workdir: args.workdir.clone(),
        hostname: args.hostname.clone(),
        terminal: args.tty,
        read_only: args.read_only,
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        seccomp_unconfined,
        seccomp_profile,
        no_new_privileges,
        ulimits: args.ulimit.clone(),
        annotations: Default::default(),
    })
}

fn list_images(store: &ImageStore, args: &ImagesArgs) -> CommandResult {
    let images = store.images()?;
    if args.quiet {
        for image in &images {
            println!("{}", image.id.short());
        }
        return Ok(());
    }
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    let mut rows = vec![["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"].map(String::from)];
    for image in &images {
        let names: Vec<(String, String)> = if image.names.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            image
                .names
                .iter()
                .map(|n| {
                    let n = &short_name(n);
                    match n
                        .rsplit_once(':')
                        .filter(|(repo, _)| !repo.is_empty() && !n[repo.len()..].contains('/'))
                    {
                        Some((repo, tag)) => (repo.to_string(), tag.to_string()),
                        None => (n.clone(), "<none>".into()),
                    }
                })
                .collect()
        };
        for (repo, tag) in names {
            rows.push([
                repo,
                tag,
                image.id.short().to_string(),
                image.created.clone().unwrap_or_else(|| "-".into()),
                human_size(image.size()),
            ]);
        }
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    super::print_table(&rows);
    Ok(())
}

fn inspect(
    store: &ImageStore,
    image: &Image,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let manifest: serde_json::Value = serde_json::from_slice(&store.read_blob(&image.manifest)?)?;
    let config = store.config(image)?;
    let mut value = serde_json::to_value(image)?;
    value["Size"] = image.size().into();
    value["Manifest"] = manifest;
    value["Config"] = serde_json::to_value(config)?;
    value["LayerDirs"] = image
        .layers
        .iter()
        .map(|l| store.layer_path(&l.diff_id).display().to_string())
        .collect::<Vec<_>>()
        .into();
    Ok(value)
}

/// A name as docker shows it: without `docker.io/` and `library/` for Docker Hub.
fn short_name(name: &str) -> String {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    name.strip_prefix("library/").unwrap_or(name).to_string()
}

/// Sizes as `docker images` prints them (decimal units).
fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}{}", units[unit]).replace(".000", "")
    }
}
