//! The paper's task (SeBS's thumbnailer): read a JPEG, shrink it to fit `size` pixels
//! (aspect kept), write it as JPEG. Payload: `{"input": LOC, "output": LOC, "size": 100}`.
//!
//! A location is an `s3://bucket/key` object, read and written through the AWS SDK as the
//! paper's thumbnailer did (region, credentials and endpoint from the usual AWS chain;
//! `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` point it at any S3-compatible server), or a
//! file in the worker's data directory (`--data-dir`): a relative path, or an absolute one
//! inside it. Anything else is refused, and so is every local path on a worker without a
//! data directory: a client never names a file of the worker's machine.

use std::path::{Component, Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::handler::Outcome;

/// The largest input read (a photograph is a few MB; a larger object is refused unread).
pub const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

/// Where thumbnails are read from and written to.
#[derive(Debug)]
pub struct Files {
    /// The only local directory used; `None`: local paths are refused.
    dir: Option<PathBuf>,
    /// The S3 client, made on first use.
    s3: OnceCell<aws_sdk_s3::Client>,
}

/// A place an image is read from or written to.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    S3 { bucket: String, key: String },
    Local(PathBuf),
}

impl Files {
    /// Files confined to `dir` (none: only `s3://` objects).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            s3: OnceCell::new(),
        }
    }

    /// Runs one thumbnail task.
    pub async fn thumbnail(&self, payload: &[u8]) -> Outcome {
        let args: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| format!("payload must be JSON {{\"input\", \"output\"}}: {e}"))?;
        let text = |key: &str| {
            args.get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("payload needs a string {key:?}"))
        };
        let (input, output) = (text("input")?, text("output")?);
        let size = args
            .get("size")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(100)
            .clamp(1, 10_000) as u32;
        let (from, to) = (self.locate(&input)?, self.locate(&output)?);
        let original = self.read(&from, &input).await?;
        let (jpeg, width, height) = tokio::task::spawn_blocking(move || shrink(&original, size))
            .await
            .map_err(|e| format!("thumbnail failed: {e}"))??;
        self.write(&to, &output, jpeg).await?;
        Ok(Bytes::from(format!(
            "{{\"output\":{},\"width\":{width},\"height\":{height}}}",
            serde_json::Value::String(output)
        )))
    }

    /// Where `loc` is, or why it may not be used.
    fn locate(&self, loc: &str) -> Result<Location, String> {
        if let Some(rest) = loc.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(Location::S3 {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                }),
                _ => Err(format!("{loc:?} is not s3://BUCKET/KEY")),
            };
        }
        let Some(dir) = &self.dir else {
            return Err(format!(
                "{loc:?}: this worker reads and writes local files only inside its --data-dir, and has none; use s3://BUCKET/KEY"
            ));
        };
        let path = Path::new(loc);
        let relative = if path.is_absolute() {
            path.strip_prefix(dir)
                .map_err(|_| format!("{loc:?} is outside this worker's data directory"))?
        } else {
            path
        };
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!("{loc:?} leaves this worker's data directory"));
        }
        Ok(Location::Local(dir.join(relative)))
    }

    async fn read(&self, from: &Location, name: &str) -> Result<Vec<u8>, String> {
        match from {
            Location::Local(path) => {
                self.inside(path, name)?;
                let len = tokio::fs::metadata(path)
                    .await
                    .map_err(|e| format!("{name}: {e}"))?
                    .len();
                if len > MAX_INPUT_BYTES {
                    return Err(format!(
                        "{name}: {len} bytes is over the {MAX_INPUT_BYTES}-byte limit"
                    ));
                }
                tokio::fs::read(path).await.map_err(|e| format!("{name}: {e}"))
            }
            Location::S3 { bucket, key } => {
                let got = self
                    .s3()
                    .await
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| format!("{name}: {}", sdk_error(&e)))?;
                let len = got.content_length().unwrap_or(0).max(0) as u64;
                if len > MAX_INPUT_BYTES {
                    return Err(format!(
                        "{name}: {len} bytes is over the {MAX_INPUT_BYTES}-byte limit"
                    ));
                }
                let body = got
                    .body
                    .collect()
                    .await
                    .map_err(|e| format!("{name}: reading the object failed: {e}"))?;
                Ok(body.into_bytes().to_vec())
            }
        }
    }

    async fn write(&self, to: &Location, name: &str, bytes: Vec<u8>) -> Result<(), String> {
        match to {
            Location::Local(path) => {
                if let Some(parent) = path.parent() {
                    self.inside(parent, name)?;
                }
                tokio::fs::write(path, bytes)
                    .await
                    .map_err(|e| format!("{name}: {e}"))
            }
            Location::S3 { bucket, key } => self
                .s3()
                .await
                .put_object()
                .bucket(bucket)
                .key(key)
                .content_type("image/jpeg")
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("{name}: {}", sdk_error(&e))),
        }
    }

    /// Fails unless `path`, once symlinks are resolved, is inside the data directory.
    fn inside(&self, path: &Path, name: &str) -> Result<(), String> {
        let Some(dir) = &self.dir else {
            return Err(format!("{name}: no data directory"));
        };
        let real = std::fs::canonicalize(path).map_err(|e| format!("{name}: {e}"))?;
        let root =
            std::fs::canonicalize(dir).map_err(|e| format!("the data directory {}: {e}", dir.display()))?;
        if real.starts_with(&root) {
            Ok(())
        } else {
            Err(format!("{name} leads outside this worker's data directory"))
        }
    }

    async fn s3(&self) -> &aws_sdk_s3::Client {
        self.s3
            .get_or_init(|| async {
                let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .http_client(carpool_proto::aws_https_client())
                    .load()
                    .await;
                // An S3-compatible server on a bare address needs path-style addressing.
                let custom = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
                    .iter()
                    .any(|v| std::env::var_os(v).is_some());
                let config = aws_sdk_s3::config::Builder::from(&sdk)
                    .force_path_style(custom)
                    .build();
                aws_sdk_s3::Client::from_conf(config)
            })
            .await
    }
}

/// An SDK error as one line: its code and message when the service sent them.
fn sdk_error<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("no message")
        ),
        None => format!("{}", aws_sdk_s3::error::DisplayErrorContext(e)),
    }
}

/// Decodes, shrinks and re-encodes: (jpeg, width, height).
/// A photo-like JPEG `width` pixels wide (2:3), the same bytes every time: gradients with
/// noise, so that it compresses like a photograph rather than a flat image. The paper's
/// experiment and the tests feed it to `thumbnail`.
pub fn synthetic_jpeg(width: u32) -> Result<Vec<u8>, String> {
    let (w, h) = (width.max(3), (width * 2 / 3).max(2));
    let mut seed: u32 = 0x1234_5678;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed & 0x3f) as u8;
        image::Rgb([
            ((x * 255 / w) as u8).wrapping_add(n),
            ((y * 255 / h) as u8).wrapping_add(n / 2),
            (((x + y) * 127 / (w + h)) as u8).wrapping_add(n),
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&img)
        .map_err(|e| format!("encoding a {w}x{h} JPEG: {e}"))?;
    Ok(out)
}

fn shrink(original: &[u8], size: u32) -> Result<(Vec<u8>, u32, u32), String> {
    let image = image::load_from_memory(original).map_err(|e| format!("decoding the input failed: {e}"))?;
    let small = image.thumbnail(size, size).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&small)
        .map_err(|e| format!("encoding the thumbnail failed: {e}"))?;
    Ok((out, small.width(), small.height()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_stay_inside_the_data_directory() {
        let dir = PathBuf::from("/srv/images");
        let files = Files::new(Some(dir.clone()));
        assert_eq!(files.locate("a/b.jpg"), Ok(Location::Local(dir.join("a/b.jpg"))));
        assert_eq!(
            files.locate("/srv/images/c.jpg"),
            Ok(Location::Local(dir.join("c.jpg")))
        );
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../x", "/srv/images/../x"] {
            assert!(files.locate(bad).is_err(), "{bad} was let through");
        }
        assert_eq!(
            files.locate("s3://b/k/x.jpg"),
            Ok(Location::S3 {
                bucket: "b".into(),
                key: "k/x.jpg".into()
            })
        );
        assert!(files.locate("s3://b").is_err() && files.locate("s3:///k").is_err());
        let none = Files::new(None);
        let err = none.locate("in.jpg").err().unwrap_or_default();
        assert!(err.contains("--data-dir"), "{err}");
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_data_directory_is_refused() {
        let root = tempfile::tempdir().expect("temp dir");
        let data = root.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(root.path().join("secret.jpg"), b"x").expect("write");
        std::os::unix::fs::symlink(root.path().join("secret.jpg"), data.join("link.jpg")).expect("symlink");
        let files = Files::new(Some(data));
        let out = files
            .thumbnail(br#"{"input": "link.jpg", "output": "out.jpg"}"#)
            .await;
        let err = out.err().unwrap_or_default();
        assert!(err.contains("outside"), "{err}");
    }
}
