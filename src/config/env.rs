//! The environment as an input. Clap reads a flag's variable from the process when its
//! command is built; here the command's variables are read from an [`Env`] instead, so a test
//! hands in a list of pairs (or none) and the process environment never reaches it by accident. A variable sets
//! its flag only when the command line does not (flags win over the environment).

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// A source of environment variables.
pub trait Env {
    fn var(&self, name: &str) -> Option<OsString>;
}

/// The process's environment (what `main` reads).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }
}

/// No variables at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _name: &str) -> Option<OsString> {
        None
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<OsString> {
        self.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| OsString::from(value))
    }
}

/// A flag that a variable can set: its argument id, long name and variable.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    id: String,
    long: String,
    pub(crate) var: String,
    /// A switch (`--http2`) rather than a flag with a value.
    switch: bool,
}

/// Takes the variables off `command` (so that parsing it reads no environment) and returns
/// them; the command keeps its help text, which names each variable.
pub(crate) fn unbind(command: Command) -> (Command, Vec<Binding>) {
    let bindings: Vec<Binding> = command
        .get_arguments()
        .filter_map(|arg| {
            let var = arg.get_env()?.to_string_lossy().into_owned();
            Some(Binding {
                id: arg.get_id().to_string(),
                long: arg.get_long()?.to_owned(),
                var,
                switch: matches!(arg.get_action(), ArgAction::SetTrue),
            })
        })
        .collect();
    let command = bindings.iter().fold(command, |command, binding| {
        command.mut_arg(&binding.id, |arg| arg.env(None))
    });
    (command, bindings)
}

/// The variables of `env` for the flags `matches` did not get from the command line, as the
/// arguments that set them (`--port=3000`). A switch takes `true` or `false`, as clap's own
/// reading of a variable does.
pub(crate) fn as_args(
    bindings: &[Binding],
    matches: &ArgMatches,
    env: &dyn Env,
) -> Result<Vec<OsString>, String> {
    let mut args = Vec::new();
    for binding in bindings {
        if matches.value_source(&binding.id) == Some(ValueSource::CommandLine) {
            continue;
        }
        let Some(value) = env.var(&binding.var) else {
            continue;
        };
        if binding.switch {
            match value.to_str() {
                Some("true") => args.push(OsString::from(format!("--{}", binding.long))),
                Some("false") => {}
                _ => {
                    return Err(format!(
                        "invalid value '{}' for '--{}'; expected one of: true, false (flag or env {})",
                        value.to_string_lossy(),
                        binding.long,
                        binding.var
                    ));
                }
            }
        } else {
            let mut arg = OsString::from(format!("--{}=", binding.long));
            arg.push(&value);
            args.push(arg);
        }
    }
    Ok(args)
}

/// The variable behind the flag clap renders as `arg` (`--port <PORT>`).
pub(crate) fn var_of<'b>(arg: &str, bindings: &'b [Binding]) -> Option<&'b str> {
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    bindings
        .iter()
        .find(|binding| binding.long == long)
        .map(|binding| binding.var.as_str())
}
