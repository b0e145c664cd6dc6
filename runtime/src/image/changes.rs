//! `--change` instructions for `import` (the Dockerfile subset `docker import` accepts):
//! `CMD`, `ENTRYPOINT`, `ENV`, `WORKDIR`, `USER`, `LABEL`, `EXPOSE`, `VOLUME`, `STOPSIGNAL`.

use oci_spec::image::Config;

use super::ImageError;

/// Applies one instruction, e.g. `CMD ["/bin/sh"]` or `ENV A=1 B="two words"`.
pub fn apply_change(config: &mut Config, change: &str) -> Result<(), ImageError> {
    let bad = || ImageError::BadChange(change.to_string());
    let (instruction, args) = change
        .trim()
        .split_once(char::is_whitespace)
        .ok_or_else(bad)?;
    let args = args.trim();
    if args.is_empty() {
        return Err(bad());
    }
    match instruction.to_ascii_uppercase().as_str() {
        "CMD" => {
            config.set_cmd(Some(command_form(args).ok_or_else(bad)?));
        }
        "ENTRYPOINT" => {
            config.set_entrypoint(Some(command_form(args).ok_or_else(bad)?));
        }
        "WORKDIR" => {
            config.set_working_dir(Some(args.to_string()));
        }
        "USER" => {
            config.set_user(Some(args.to_string()));
        }
        "STOPSIGNAL" => {
            config.set_stop_signal(Some(args.to_string()));
        }
        "ENV" => {
            let mut env = config.env().clone().unwrap_or_default();
            for (key, value) in key_values(args).ok_or_else(bad)? {
                env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
                env.push(format!("{key}={value}"));
            }
            config.set_env(Some(env));
        }
        "LABEL" => {
            let mut labels = config.labels().clone().unwrap_or_default();
            labels.extend(key_values(args).ok_or_else(bad)?);
            config.set_labels(Some(labels));
        }
        "EXPOSE" => {
            let mut ports = config.exposed_ports().clone().unwrap_or_default();
            for port in args.split_whitespace() {
                let port = if port.contains('/') {
                    port.to_string()
                } else {
                    format!("{port}/tcp")
                };
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
            config.set_exposed_ports(Some(ports));
        }
        "VOLUME" => {
            let mut volumes = config.volumes().clone().unwrap_or_default();
            let new = if args.starts_with('[') {
                serde_json::from_str::<Vec<String>>(args).map_err(|_| bad())?
            } else {
                args.split_whitespace().map(str::to_string).collect()
            };
            volumes.extend(new);
            config.set_volumes(Some(volumes));
        }
        _ => return Err(bad()),
    }
    Ok(())
}

/// JSON (exec) form `["a","b"]`, or shell form run by `/bin/sh -c`.
fn command_form(args: &str) -> Option<Vec<String>> {
    if args.starts_with('[') {
        serde_json::from_str(args).ok()
    } else {
        Some(vec!["/bin/sh".into(), "-c".into(), args.to_string()])
    }
}

/// `K=V K2="v 2"` pairs, or the legacy single `K V` form.
fn key_values(args: &str) -> Option<Vec<(String, String)>> {
    let words = shell_words(args)?;
    if !words[0].contains('=') {
        let (key, value) = args.split_once(char::is_whitespace)?;
        return Some(vec![(key.to_string(), value.trim().to_string())]);
    }
    words
        .into_iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .filter(|kv| kv.as_ref().is_none_or(|(k, _)| !k.is_empty()))
        .collect()
}

/// Splits on whitespace, honouring double and single quotes and backslash escapes.
fn shell_words(input: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = input.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                current.push(chars.next()?);
                in_word = true;
            }
            (Some(_), c) => current.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return None;
    }
    if in_word {
        words.push(current);
    }
    (!words.is_empty()).then_some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_forms_are_understood() {
        let mut config = Config::default();
        apply_change(&mut config, r#"CMD ["/bin/echo", "hi there"]"#).unwrap();
        apply_change(&mut config, "ENTRYPOINT echo $HOME").unwrap();
        apply_change(&mut config, r#"ENV A=1 B="two words""#).unwrap();
        apply_change(&mut config, "ENV A 3").unwrap();
        apply_change(&mut config, "LABEL org.example=yes").unwrap();
        apply_change(&mut config, "EXPOSE 80 53/udp").unwrap();
        apply_change(&mut config, "workdir /srv").unwrap();
        assert_eq!(config.cmd().clone().unwrap(), ["/bin/echo", "hi there"]);
        assert_eq!(
            config.entrypoint().clone().unwrap(),
            ["/bin/sh", "-c", "echo $HOME"]
        );
        assert_eq!(config.env().clone().unwrap(), ["B=two words", "A=3"]);
        assert_eq!(config.labels().clone().unwrap()["org.example"], "yes");
        assert_eq!(
            config.exposed_ports().clone().unwrap(),
            ["80/tcp", "53/udp"]
        );
        assert_eq!(config.working_dir().as_deref(), Some("/srv"));
        for bad in ["CMD", "FROM scratch", "ENV \"unterminated", "CMD [broken"] {
            assert!(apply_change(&mut config, bad).is_err(), "{bad} accepted");
        }
    }
}
