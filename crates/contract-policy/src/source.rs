//! Source positions and comments of descriptor elements, looked up by their descriptor path.

use prost_reflect::FileDescriptor;

/// Where an element was declared and the comment in front of it.
pub struct SourceInfo {
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// Leading comment, empty when none.
    pub leading_comment: String,
}

/// Finds the source location recorded for `path` in `file`.
pub fn lookup(file: &FileDescriptor, path: &[i32]) -> SourceInfo {
    let location = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|location| location.path == path));
    match location {
        Some(location) => SourceInfo {
            line: location.span.first().map_or(0, |line| *line as usize + 1),
            leading_comment: location.leading_comments().to_owned(),
        },
        None => SourceInfo {
            line: 0,
            leading_comment: String::new(),
        },
    }
}
