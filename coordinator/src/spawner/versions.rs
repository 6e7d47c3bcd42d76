//! How each memory size of `--memory-sizes` is reached on Lambda. A Lambda function has one
//! memory size per version, so a size is a qualifier of `--lambda-function`:
//!
//! - `--lambda-size SIZE=QUALIFIER` names an alias or version the user made for a size;
//! - `--lambda-publish-sizes` has carpool publish a version per size itself: for each size it
//!   sets `$LATEST`'s memory (`UpdateFunctionConfiguration`), waits for the update, publishes
//!   a version (`PublishVersion`, pinned to `$LATEST`'s code by its SHA-256) described as
//!   carpool's for that size, and puts `$LATEST`'s memory back at the end. A version published
//!   earlier for the same size, code, timeout and environment is reused, so a restart (or the
//!   standby taking over) publishes nothing new.
//!
//! One size without either: the invocations go to `--lambda-qualifier` (or `$LATEST`), as
//! before.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_lambda::Client;
use aws_sdk_lambda::error::DisplayErrorContext;
use aws_sdk_lambda::types::{FunctionConfiguration, LastUpdateStatus};
use tracing::info;

use crate::config::LambdaTarget;
use crate::error::{Error, Result};

/// Longest wait for a configuration update to finish before publishing.
const UPDATE_WAIT: Duration = Duration::from_secs(120);
/// Pause between two looks at an update in progress.
const UPDATE_POLL: Duration = Duration::from_millis(250);

/// The description carpool gives the version it publishes for `memory_mb`; only a version so
/// described is reused.
pub(crate) fn description(memory_mb: u32) -> String {
    format!("carpool worker, {memory_mb} MB")
}

/// The qualifier each size is invoked with: the user's `--lambda-size` pairs, or the versions
/// carpool publishes (`--lambda-publish-sizes`). Empty for one size without either (the
/// target's own qualifier serves it). Every size of `sizes` has a qualifier when there are
/// several.
pub(crate) async fn qualifiers(
    client: &Client,
    target: &LambdaTarget,
    sizes: &[u32],
) -> Result<BTreeMap<u32, String>> {
    if target.publish_sizes {
        return publish(client, &target.function_name, sizes).await;
    }
    let named: BTreeMap<u32, String> = target.sizes.iter().cloned().collect();
    check_named(&named, sizes)?;
    Ok(named)
}

/// Every size offered has a qualifier when there are several, and every qualifier names a
/// size offered.
pub(crate) fn check_named(named: &BTreeMap<u32, String>, sizes: &[u32]) -> Result<()> {
    if let Some(extra) = named.keys().find(|s| !sizes.contains(s)) {
        return Err(Error::LambdaConfig(format!(
            "--lambda-size names {extra} MB, which is not one of --memory-sizes {sizes:?}"
        )));
    }
    if sizes.len() > 1
        && let Some(missing) = sizes.iter().find(|s| !named.contains_key(s))
    {
        return Err(Error::LambdaConfig(format!(
            "--memory-sizes {sizes:?} on Lambda needs a qualifier per size: {missing} MB has none (pass --lambda-size {missing}=ALIAS, or --lambda-publish-sizes)"
        )));
    }
    Ok(())
}

/// What a published version must share with `$LATEST` to serve a size: the code, the
/// timeout and the environment (a version is immutable, so one published before a deploy
/// runs the old code).
#[derive(Debug, PartialEq)]
struct Shape<'a> {
    code: Option<&'a str>,
    timeout: Option<i32>,
    environment: Option<&'a HashMap<String, String>>,
}

impl<'a> Shape<'a> {
    fn of(c: &'a FunctionConfiguration) -> Self {
        Self {
            code: c.code_sha256(),
            timeout: c.timeout(),
            environment: c.environment().and_then(|e| e.variables()),
        }
    }
}

/// Publishes (or finds) a version of `function` per size.
async fn publish(client: &Client, function: &str, sizes: &[u32]) -> Result<BTreeMap<u32, String>> {
    let fail = |what: &str, e: &dyn std::fmt::Display| failed(what, function, e);
    let versions = list_versions(client, function).await?;
    let latest = wait_for_update(client, function).await?;
    let original_mb = latest.memory_size();
    let mut out = BTreeMap::new();
    let mut changed = false;
    for &size in sizes {
        let mb = i32::try_from(size).map_err(|e| fail("a memory size", &e))?;
        let reuse = versions.iter().find(|v| {
            v.version().is_some_and(|n| n != "$LATEST")
                && v.memory_size() == Some(mb)
                && v.description() == Some(description(size).as_str())
                && Shape::of(v) == Shape::of(&latest)
        });
        if let Some(version) = reuse.and_then(|v| v.version()) {
            info!(
                function,
                memory_mb = size,
                version,
                "reusing the version published for this size"
            );
            out.insert(size, version.to_owned());
            continue;
        }
        set_memory(client, function, mb).await?;
        changed = true;
        wait_for_update(client, function).await?;
        let published = client
            .publish_version()
            .function_name(function)
            .description(description(size))
            .set_code_sha256(latest.code_sha256().map(str::to_owned))
            .send()
            .await
            .map_err(|e| fail("PublishVersion", &DisplayErrorContext(e)))?;
        let version = published
            .version()
            .filter(|v| !v.is_empty() && *v != "$LATEST")
            .ok_or_else(|| fail("PublishVersion", &"the answer named no version"))?;
        if published.memory_size() != Some(mb) {
            return Err(fail(
                "PublishVersion",
                &format!(
                    "version {version} has {:?} MB, not {size} (another deploy in between?)",
                    published.memory_size()
                ),
            ));
        }
        info!(
            function,
            memory_mb = size,
            version,
            "published a version for this size"
        );
        out.insert(size, version.to_owned());
    }
    if changed && let Some(mb) = original_mb {
        // $LATEST's memory back as it was.
        set_memory(client, function, mb).await?;
    }
    Ok(out)
}

/// Sets `$LATEST`'s memory to `mb`.
async fn set_memory(client: &Client, function: &str, mb: i32) -> Result<()> {
    client
        .update_function_configuration()
        .function_name(function)
        .memory_size(mb)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| failed("UpdateFunctionConfiguration", function, DisplayErrorContext(e)))
}

/// A call of `--lambda-publish-sizes` on `function` that failed, and why.
fn failed(call: &str, function: &str, why: impl std::fmt::Display) -> Error {
    Error::LambdaConfig(format!(
        "--lambda-publish-sizes: {call} of {function} failed: {why}"
    ))
}

/// Every version of `function`, page by page.
async fn list_versions(client: &Client, function: &str) -> Result<Vec<FunctionConfiguration>> {
    let mut versions = Vec::new();
    let mut marker = None;
    loop {
        let page = client
            .list_versions_by_function()
            .function_name(function)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| failed("ListVersionsByFunction", function, DisplayErrorContext(e)))?;
        versions.extend(page.versions().iter().cloned());
        match page.next_marker() {
            Some(m) if !m.is_empty() => marker = Some(m.to_owned()),
            _ => return Ok(versions),
        }
    }
}

/// `$LATEST`'s configuration once no update of it is in progress (Lambda refuses a new
/// update or a publish meanwhile); an update that failed is an error.
async fn wait_for_update(client: &Client, function: &str) -> Result<FunctionConfiguration> {
    let started = Instant::now();
    loop {
        let c = client
            .get_function_configuration()
            .function_name(function)
            .send()
            .await
            .map_err(|e| failed("GetFunctionConfiguration", function, DisplayErrorContext(e)))?;
        match c.last_update_status() {
            Some(LastUpdateStatus::InProgress) if started.elapsed() < UPDATE_WAIT => {
                tokio::time::sleep(UPDATE_POLL).await;
            }
            Some(LastUpdateStatus::InProgress) => {
                return Err(Error::LambdaConfig(format!(
                    "--lambda-publish-sizes: {function}'s configuration update did not finish within {UPDATE_WAIT:?}"
                )));
            }
            Some(LastUpdateStatus::Failed) => {
                return Err(Error::LambdaConfig(format!(
                    "--lambda-publish-sizes: {function}'s last configuration update failed: {}",
                    c.last_update_status_reason().unwrap_or("no reason given")
                )));
            }
            _ => {
                return Ok(FunctionConfiguration::builder()
                    .set_version(c.version().map(str::to_owned))
                    .set_memory_size(c.memory_size())
                    .set_code_sha256(c.code_sha256().map(str::to_owned))
                    .set_timeout(c.timeout())
                    .set_environment(c.environment().cloned())
                    .build());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_sizes_need_a_qualifier_each_and_every_qualifier_a_size() {
        let named: BTreeMap<u32, String> = [(1024, "small".to_owned())].into();
        assert!(check_named(&named, &[1024]).is_ok());
        assert!(
            check_named(&BTreeMap::new(), &[2048]).is_ok(),
            "one size: the target's qualifier"
        );
        let missing = check_named(&named, &[1024, 4096]).map_err(|e| e.to_string());
        assert!(
            matches!(&missing, Err(m) if m.contains("4096 MB has none") && m.contains("--lambda-publish-sizes")),
            "{missing:?}"
        );
        let extra = check_named(&named, &[2048]).map_err(|e| e.to_string());
        assert!(
            matches!(&extra, Err(m) if m.contains("names 1024 MB")),
            "{extra:?}"
        );
    }
}
