//! Stripe's list endpoints: cursor paging (`limit`, `starting_after`, `ending_before`) over
//! objects in reverse chronological order, and the `created` filter every list takes.

use super::model::ApiError;
use super::params::{limit_param, scalar};
use crate::sandbox::form::Params;
use serde_json::{json, Value};

/// How a list's objects are named and dated, and how one is rendered.
pub(super) struct Listed<'a, T> {
    /// The object's name in a "No such …" error (`payment_intent`, `refund`, `charge`).
    pub kind: &'static str,
    pub url: &'static str,
    pub id: &'a dyn Fn(&T) -> &str,
    pub created: &'a dyn Fn(&T) -> i64,
    /// `None` leaves an object out (one whose related objects are gone).
    pub render: &'a dyn Fn(&T) -> Option<Value>,
}

/// One page of a Stripe list over `all` (newest first): `limit` objects after
/// `starting_after`, or the `limit` just before `ending_before` (still newest first), among
/// those the `created` filter keeps; `has_more` says whether more lie beyond the page in the
/// direction of travel, which is what the SDKs' auto-paging follows.
pub(super) fn page<T>(p: &Params, all: &[&T], how: Listed<'_, T>) -> Result<Value, ApiError> {
    let limit = limit_param(p)?;
    let range = Created::param(p)?;
    let at = |param: &str| -> Result<Option<usize>, ApiError> {
        let Some(cursor) = scalar(p, param)? else { return Ok(None) };
        all.iter()
            .position(|x| (how.id)(x) == cursor)
            .map(Some)
            .ok_or_else(|| ApiError::no_such(how.kind, cursor, param))
    };
    let kept = |xs: &[&T]| -> Vec<usize> {
        xs.iter().enumerate().filter(|(_, x)| range.holds((how.created)(x))).map(|(i, _)| i).collect()
    };
    let (chosen, has_more) = match (at("starting_after")?, at("ending_before")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "You may only specify one of these parameters: starting_after, ending_before.",
                Some("ending_before"),
                None,
            ))
        }
        (Some(i), None) => {
            let rest: Vec<usize> = kept(&all[i + 1..]).into_iter().map(|j| j + i + 1).collect();
            (rest.iter().take(limit).copied().collect::<Vec<_>>(), rest.len() > limit)
        }
        (None, Some(i)) => {
            let before = kept(&all[..i]);
            (before[before.len().saturating_sub(limit)..].to_vec(), before.len() > limit)
        }
        (None, None) => {
            let rest = kept(all);
            (rest.iter().take(limit).copied().collect(), rest.len() > limit)
        }
    };
    let data: Vec<Value> = chosen.into_iter().filter_map(|i| (how.render)(all[i])).collect();
    Ok(json!({"object": "list", "data": data, "has_more": has_more, "url": how.url}))
}

/// The `created` filter: a Unix time (`created=…`) or a range (`created[gt]`, `[gte]`,
/// `[lt]`, `[lte]`).
#[derive(Debug, Default, PartialEq)]
struct Created {
    gt: Option<i64>,
    gte: Option<i64>,
    lt: Option<i64>,
    lte: Option<i64>,
}

impl Created {
    fn param(p: &Params) -> Result<Created, ApiError> {
        let int = |name: String, s: &str| {
            s.parse::<i64>().map_err(|_| ApiError::invalid(format!("Invalid integer: {s}"), Some(&name), None))
        };
        match p.get(&["created"]) {
            None => Ok(Created::default()),
            Some(Value::String(s)) => {
                let t = int("created".into(), s)?;
                Ok(Created { gte: Some(t), lte: Some(t), ..Created::default() })
            }
            Some(Value::Object(m)) => {
                let mut c = Created::default();
                for (k, v) in m {
                    let name = format!("created[{k}]");
                    let Some(s) = v.as_str() else {
                        return Err(ApiError::invalid(format!("Invalid integer: {name}"), Some(&name), None));
                    };
                    let slot = match k.as_str() {
                        "gt" => &mut c.gt,
                        "gte" => &mut c.gte,
                        "lt" => &mut c.lt,
                        "lte" => &mut c.lte,
                        _ => return Err(ApiError::unknown(&name)),
                    };
                    *slot = Some(int(name, s)?);
                }
                Ok(c)
            }
            Some(_) => Err(ApiError::invalid("Invalid created: must be an integer or a hash", Some("created"), None)),
        }
    }

    fn holds(&self, t: i64) -> bool {
        self.gt.is_none_or(|b| t > b)
            && self.gte.is_none_or(|b| t >= b)
            && self.lt.is_none_or(|b| t < b)
            && self.lte.is_none_or(|b| t <= b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::form;

    /// Objects 9 (newest, created 9) down to 0.
    fn list(query: &str) -> Result<(Vec<i64>, bool), ApiError> {
        let all: Vec<(String, i64)> = (0..10).rev().map(|i| (format!("o_{i}"), i)).collect();
        let refs: Vec<&(String, i64)> = all.iter().collect();
        let how = Listed {
            kind: "thing",
            url: "/v1/things",
            id: &|x: &(String, i64)| x.0.as_str(),
            created: &|x: &(String, i64)| x.1,
            render: &|x: &(String, i64)| Some(json!(x.1)),
        };
        let v = page(&form::parse(query.as_bytes()).unwrap(), &refs, how)?;
        let ids = v["data"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        Ok((ids, v["has_more"].as_bool().unwrap()))
    }

    #[test]
    fn pages_forward_and_backward_as_stripe_does() {
        assert_eq!(list("limit=3").unwrap(), (vec![9, 8, 7], true));
        assert_eq!(list("limit=3&starting_after=o_7").unwrap(), (vec![6, 5, 4], true));
        assert_eq!(list("limit=3&starting_after=o_3").unwrap(), (vec![2, 1, 0], false));
        // Backward: the page just before the cursor, newest first; has_more looks further back.
        assert_eq!(list("limit=3&ending_before=o_3").unwrap(), (vec![6, 5, 4], true));
        assert_eq!(list("limit=3&ending_before=o_6").unwrap(), (vec![9, 8, 7], false));
        assert_eq!(list("limit=3&ending_before=o_9").unwrap(), (vec![], false));
        assert_eq!(list("ending_before=o_nope").unwrap_err().error["code"], "resource_missing");
        assert_eq!(list("starting_after=o_1&ending_before=o_5").unwrap_err().status, 400);
    }

    #[test]
    fn the_created_filter_keeps_its_range() {
        assert_eq!(list("created[gte]=3&created[lt]=6").unwrap(), (vec![5, 4, 3], false));
        assert_eq!(list("created=4").unwrap(), (vec![4], false));
        assert_eq!(list("limit=2&created[gt]=6").unwrap(), (vec![9, 8], true));
        assert_eq!(list("limit=2&created[lte]=5&starting_after=o_8").unwrap(), (vec![5, 4], true));
        assert_eq!(list("limit=2&created[gt]=2&ending_before=o_5").unwrap(), (vec![7, 6], true));
        assert!(list("created[gt]=x").is_err());
        assert_eq!(list("created[since]=1").unwrap_err().error["code"], "parameter_unknown");
    }
}
