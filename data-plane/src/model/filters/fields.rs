//! Removing a field the proxy sets itself, so that a client cannot smuggle its own value past
//! it under another spelling.

/// Removes a field the proxy sets (an identity header) with its twins: fields whose names
/// differ only by `_` for `-` (`x_user` for `x-user`), which CGI-style backends read as the
/// same variable. Otherwise a client could send a twin the backend may take for the proxy's.
pub fn remove_field(headers: &mut http::HeaderMap, name: &http::HeaderName) {
    headers.remove(name);
    unlist_from_connection(headers, name);
    if !name.as_str().contains('-') {
        return;
    }
    let twin = |k: &http::HeaderName| {
        k.as_str().len() == name.as_str().len()
            && k.as_str()
                .bytes()
                .zip(name.as_str().bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    };
    let twins: Vec<http::HeaderName> = headers.keys().filter(|k| twin(k)).cloned().collect();
    for k in twins {
        headers.remove(k);
    }
}

/// Takes `name` out of the Connection field's list: a client naming a field there would have
/// the proxy drop it as hop-by-hop, after it set the field (an identity header) itself.
fn unlist_from_connection(headers: &mut http::HeaderMap, name: &http::HeaderName) {
    let connection = http::header::CONNECTION;
    let tokens = |headers: &http::HeaderMap| -> Vec<String> {
        headers
            .get_all(&connection)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    };
    if !headers.contains_key(&connection) {
        return;
    }
    let all = tokens(headers);
    if !all.iter().any(|t| t.eq_ignore_ascii_case(name.as_str())) {
        return;
    }
    let kept: Vec<String> = all
        .into_iter()
        .filter(|t| !t.eq_ignore_ascii_case(name.as_str()))
        .collect();
    headers.remove(&connection);
    if let Ok(v) = http::HeaderValue::from_str(&kept.join(", "))
        && !kept.is_empty()
    {
        headers.insert(connection, v);
    }
}
