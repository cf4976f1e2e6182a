import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.StringTokenizer;

public class Main {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        StringBuilder all = new StringBuilder();
        for (String line; (line = in.readLine()) != null; ) all.append(line).append(' ');
        StringTokenizer t = new StringTokenizer(all.toString());
        long n = Long.parseLong(t.nextToken()), s = 0;
        for (long i = 0; i < n; i++) s += Long.parseLong(t.nextToken());
        System.out.println(s);
    }
}
