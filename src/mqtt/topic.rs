//! MQTT topic names and filters, their rules, and their translation to AMQP routing keys and
//! binding keys on `amq.topic`, as RabbitMQ's MQTT plugin translates them: `/` becomes `.`,
//! `+` becomes `*` and `#` stays `#`, and back for deliveries. So a device's
//! `sensors/42/temperature` reaches an AMQP queue bound with `sensors.*.temperature`.

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

/// A topic name a PUBLISH may carry: not empty, no wildcards (the specification's rule).
pub fn check_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid("empty topic name"));
    }
    if name.contains(['+', '#']) {
        return Err(Invalid("wildcard in a topic name"));
    }
    Ok(())
}

/// A topic filter a SUBSCRIBE may carry: not empty; `+` a whole level; `#` a whole level
/// and the last one.
pub fn check_filter(filter: &str) -> Result<(), Invalid> {
    if filter.is_empty() {
        return Err(Invalid("empty topic filter"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(Invalid("'#' not alone at the last level of a topic filter"));
        }
        if level.contains('+') && *level != "+" {
            return Err(Invalid("'+' not alone at its level of a topic filter"));
        }
    }
    Ok(())
}

/// The AMQP routing key (or binding key, for a filter) of an MQTT topic.
pub fn to_amqp(topic: &str) -> String {
    topic
        .chars()
        .map(|c| match c {
            '/' => '.',
            '+' => '*',
            c => c,
        })
        .collect()
}

/// The MQTT topic of an AMQP routing key.
pub fn to_mqtt(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '.' => '/',
            '*' => '+',
            c => c,
        })
        .collect()
}

/// Whether topic `name` matches `filter`, by MQTT's rules: `+` one level, `#` the rest
/// (the parent level included), and a filter starting with a wildcard never matches a topic
/// starting with `$`.
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters_follow_the_specification() {
        assert!(check_name("a/b").is_ok());
        assert!(check_name("/").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/+").is_err());
        assert!(check_name("a/#").is_err());
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/", "sport/tennis/#", "+/tennis/#"] {
            assert!(check_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a/b#", "a+", "a/+b", "sport/tennis#"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn translation_is_rabbitmqs() {
        assert_eq!(to_amqp("sensors/42/temperature"), "sensors.42.temperature");
        assert_eq!(to_amqp("sensors/+/temperature"), "sensors.*.temperature");
        assert_eq!(to_amqp("a/#"), "a.#");
        assert_eq!(to_mqtt("sensors.42.temperature"), "sensors/42/temperature");
        assert_eq!(to_mqtt("a.*.#"), "a/+/#");
    }

    #[test]
    fn matching_follows_the_specification() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
            ("sport/#", "sport", true),
            ("#", "anything/at/all", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/broker", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/broker", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
        ];
        for (filter, name, want) in cases {
            assert_eq!(matches(filter, name), want, "{filter} against {name}");
        }
    }
}
