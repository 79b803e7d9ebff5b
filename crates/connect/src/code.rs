//! Status codes: the gRPC numbers, the Connect names and the HTTP statuses of the Connect spec.

use http::StatusCode;

/// A status code shared by gRPC and Connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Not an error.
    Ok,
    /// The caller canceled.
    Canceled,
    /// Unknown error.
    Unknown,
    /// The request is invalid.
    InvalidArgument,
    /// The deadline passed.
    DeadlineExceeded,
    /// Not found.
    NotFound,
    /// Already exists.
    AlreadyExists,
    /// The caller lacks permission.
    PermissionDenied,
    /// A quota or limit is exhausted.
    ResourceExhausted,
    /// The system is not in the state the call needs.
    FailedPrecondition,
    /// Aborted, typically a concurrency conflict.
    Aborted,
    /// Out of range.
    OutOfRange,
    /// Not implemented.
    Unimplemented,
    /// Internal error.
    Internal,
    /// Temporarily unavailable.
    Unavailable,
    /// Unrecoverable data loss.
    DataLoss,
    /// No valid credentials.
    Unauthenticated,
}

const ALL: [Code; 17] = [
    Code::Ok,
    Code::Canceled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

impl Code {
    /// The code for a gRPC status number; unknown numbers are `Unknown`.
    pub fn from_grpc(number: i32) -> Code {
        usize::try_from(number)
            .ok()
            .and_then(|index| ALL.get(index))
            .copied()
            .unwrap_or(Code::Unknown)
    }

    /// The gRPC status number.
    pub fn grpc(self) -> i32 {
        ALL.iter().position(|code| *code == self).unwrap_or(2) as i32
    }

    /// The Connect name (`not_found`); gRPC CANCELLED is Connect `canceled`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status a Connect unary error with this code carries.
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::Ok => StatusCode::OK,
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_numbers_round_trip_and_unknown_numbers_are_unknown() {
        for (number, code) in ALL.iter().enumerate() {
            assert_eq!(Code::from_grpc(number as i32), *code);
            assert_eq!(code.grpc(), number as i32);
        }
        assert_eq!(Code::from_grpc(42), Code::Unknown);
        assert_eq!(Code::from_grpc(-1), Code::Unknown);
    }

    #[test]
    fn http_statuses_follow_the_connect_table() {
        let table = [
            (Code::Canceled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, status) in table {
            assert_eq!(code.http_status().as_u16(), status, "{code:?}");
        }
    }
}
