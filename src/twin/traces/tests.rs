//! Tests of the trace readers and arrival streams.

use super::*;
use crate::twin::time::Nanos;

#[test]
fn azure_crlf_and_seven_decimals() {
    let t = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\n2023-11-16 18:15:50.9951690,396,109";
    let tr = Trace::parse(t, TraceFormat::Azure, "x.csv").unwrap();
    assert_eq!(tr.records.len(), 2);
    assert_eq!(tr.records[1].arrival_ns, 4_314_579_000);
    assert_eq!(tr.records[1].output_tokens, 109);
}

#[test]
fn azure_bad_row_names_line_and_field() {
    let t = "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\n2023-11-16 18:15:50.9951690,-3,109";
    let e = Trace::parse(t, TraceFormat::Azure, "x.csv").unwrap_err().to_string();
    assert!(e.contains("x.csv") && e.contains("line 3") && e.contains("ContextTokens"), "{e}");
}

#[test]
fn mooncake_rows() {
    let t = "{\"timestamp\": 3000, \"input_length\": 600, \"output_length\": 5, \"hash_ids\": [0, 1]}\n{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 2, \"hash_ids\": [0]}\n";
    let tr = Trace::parse(t, TraceFormat::Mooncake, "m.jsonl").unwrap();
    assert_eq!(tr.records[0].input_tokens, 10);
    assert_eq!(tr.records[1].arrival_ns, 3_000_000_000);
    let e = Trace::parse("{\"timestamp\": 1}\n", TraceFormat::Mooncake, "m.jsonl").unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn burstgpt_skips_failures() {
    let t = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n5,ChatGPT,100,0,100,Conversation log\n7,GPT-4,50,20,70,API log\n";
    let tr = Trace::parse(t, TraceFormat::Burstgpt, "b.csv").unwrap();
    assert_eq!(tr.records.len(), 1);
    assert_eq!(tr.records[0].input_tokens, 50);
}

#[test]
fn synthetic_is_seeded_and_rate_is_right() {
    let mk = || {
        ArrivalStream::synthetic(
            ArrivalProcess::Poisson { rate_rps: 10.0 },
            LengthSampler::Fixed(10, 10),
            7,
            1000.0,
            None,
            1.0,
        )
        .unwrap()
    };
    let (mut a, mut b) = (mk(), mk());
    let mut n = 0;
    while let Some(x) = a.next_arrival() {
        assert_eq!(Some(x), b.next_arrival());
        n += 1;
    }
    assert!((9000..11000).contains(&n), "{n}");
}

#[test]
fn steps_change_rate() {
    let p = ArrivalProcess::Steps { at_s: vec![0.0, 100.0], rates_rps: vec![1.0, 10.0] };
    let mut s = ArrivalStream::synthetic(p, LengthSampler::Fixed(1, 1), 1, 200.0, None, 1.0).unwrap();
    let (mut lo, mut hi) = (0, 0);
    while let Some(a) = s.next_arrival() {
        if a.at.as_secs_f64() < 100.0 {
            lo += 1
        } else {
            hi += 1
        }
    }
    assert!(hi > 5 * lo, "{lo} {hi}");
}

#[test]
fn window_and_load() {
    let recs = (0..100)
        .map(|i| TraceRecord { arrival_ns: i * 1_000_000_000, input_tokens: 1, output_tokens: 1, hash_ids: vec![] })
        .collect();
    let tr = std::sync::Arc::new(Trace { origin: "t".into(), records: recs });
    let mut s = ArrivalStream::replay(tr, 0.5, 1.0, 2.0).unwrap();
    // Span 99 s: the window starts at 49.5 s; the first record (50 s) arrives 0.5 s / 2 later.
    let first = s.next_arrival().unwrap();
    assert_eq!(first.at, Nanos(250_000_000));
    let second = s.next_arrival().unwrap();
    assert_eq!(second.at, Nanos(750_000_000));
    assert_eq!(s.len_hint(), Some(48));
    assert!(ArrivalStream::replay(std::sync::Arc::new(Trace::default()), 0.5, 0.2, 1.0).is_err());
}

fn drain(mut s: ArrivalStream) -> Vec<(u64, u32)> {
    std::iter::from_fn(|| s.next_arrival()).map(|a| (a.at.0, a.input_tokens)).collect()
}

#[test]
fn resampled_replay_is_seeded_ordered_and_keeps_the_rate() {
    // 2,000 requests at irregular times over ~1,000 s.
    let mut t = 0u64;
    let recs: Vec<TraceRecord> = (0..2000u64)
        .map(|i| {
            t += 1 + (i * 7919 % 997) * 1_000_000;
            TraceRecord { arrival_ns: t, input_tokens: i as u32, output_tokens: 1, hash_ids: vec![] }
        })
        .collect();
    let tr = std::sync::Arc::new(Trace { origin: "t".into(), records: recs });
    let exact = drain(ArrivalStream::replay(tr.clone(), 0.0, 1.0, 1.0).unwrap());
    // Seed 0 is the trace as recorded.
    assert_eq!(drain(ArrivalStream::replay_resampled(tr.clone(), 0.0, 1.0, 1.0, 0).unwrap()), exact);
    let a = drain(ArrivalStream::replay_resampled(tr.clone(), 0.0, 1.0, 1.0, 1).unwrap());
    let b = drain(ArrivalStream::replay_resampled(tr.clone(), 0.0, 1.0, 1.0, 1).unwrap());
    let c = drain(ArrivalStream::replay_resampled(tr.clone(), 0.0, 1.0, 1.0, 2).unwrap());
    assert_eq!(a, b, "same seed, same arrivals");
    assert_ne!(a, c, "another seed, other arrivals");
    assert_ne!(a, exact);
    assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "arrivals in time order");
    // Poisson(1) copies: the count stays within a few standard deviations (sqrt(2000) ≈ 45).
    assert!((a.len() as i64 - 2000).abs() < 200, "{} arrivals", a.len());
    // Each copy stays within half a gap of its original request.
    let span = exact.last().unwrap().0;
    assert!(a.last().unwrap().0 <= span);
    // The rate profile is kept: arrivals per 100 s bin differ little from the trace's.
    let bins = |v: &[(u64, u32)]| {
        let mut h = vec![0i64; 11];
        for (at, _) in v {
            h[(*at / 100_000_000_000) as usize] += 1;
        }
        h
    };
    let (he, ha) = (bins(&exact), bins(&a));
    for (x, y) in he.iter().zip(&ha) {
        assert!((x - y).abs() <= 4 * (*x as f64).sqrt() as i64 + 5, "bins {he:?} vs {ha:?}");
    }
}

proptest::proptest! {
    #[test]
    fn readers_never_panic(s in "\\PC{0,300}") {
        let _ = Trace::parse(&s, TraceFormat::Azure, "f");
        let _ = Trace::parse(&s, TraceFormat::Mooncake, "f");
        let _ = Trace::parse(&s, TraceFormat::Burstgpt, "f");
    }
    #[test]
    fn azure_like_rows_never_panic(ts in "[0-9: .-]{0,30}", a in "[-0-9.e]{0,12}", b in "[-0-9.e]{0,12}") {
        let s = format!("TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,1,1\r\n{ts},{a},{b}");
        let _ = Trace::parse(&s, TraceFormat::Azure, "f");
    }
}
